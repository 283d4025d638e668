// Package cmdline holds the command-line conventions every prov-* binary
// follows: a sub-command table and its dispatcher (command.go), exit codes
// and how an error becomes one, usage errors, repeatable and required
// flags, and the servers' serve command with its log and garbage-collector
// settings (serve.go). Every binary, the device's included, links it, so it
// uses the standard library only; it is plumbing that belongs to no one
// part, hence internal/.
package cmdline

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
)

// Exit codes shared by every binary. A binary may add its own above these
// (Program.Codes, WithExitCode).
const (
	ExitOK    = 0
	ExitError = 1
	ExitUsage = 2
)

// NewFlags makes a flag set named "<prog> <cmd>" that reports errors to
// stderr and returns them instead of exiting.
func NewFlags(prog, cmd string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(prog+" "+cmd, flag.ContinueOnError)
	fs.SetOutput(stderr)
	return fs
}

// Parse parses args; a bad flag and any positional argument are usage
// errors.
func Parse(fs *flag.FlagSet, args []string) error {
	if err := parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("%w: unexpected argument %q", ErrUsage, fs.Arg(0))
	}
	return nil
}

// ParseInterleaved parses args whose flags may come before, between or
// after the positional arguments, and returns the positional ones in order.
func ParseInterleaved(fs *flag.FlagSet, args []string) ([]string, error) {
	var positional []string
	for {
		if err := parse(fs, args); err != nil {
			return nil, err
		}
		if fs.NArg() == 0 {
			return positional, nil
		}
		positional = append(positional, fs.Arg(0))
		args = fs.Args()[1:]
	}
}

// parse is fs.Parse with a bad flag made a usage error; -h stays
// flag.ErrHelp (the flag set has printed its help).
func parse(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return fmt.Errorf("%w: %w", ErrUsage, err)
	}
	return nil
}

// Required returns a usage error naming the first flag (name, value) whose
// value is empty.
func Required(flags ...[2]string) error {
	for _, f := range flags {
		if f[1] == "" {
			return fmt.Errorf("%w: --%s is required", ErrUsage, f[0])
		}
	}
	return nil
}

// List is a repeatable string flag; a value may also hold several,
// separated by commas.
type List []string

func (l *List) String() string { return strings.Join(*l, ",") }

// Set adds a value.
func (l *List) Set(v string) error {
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			*l = append(*l, s)
		}
	}
	return nil
}
