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

// NewFlags makes a flag set named "<prog> <cmd>" that returns its errors
// instead of exiting (Parse makes them usage errors, which the dispatcher
// reports on stderr) and prints its help (-h, --help) on stdout, as the
// command's output that exits 0, as GNU tools and Go's flag.ExitOnError
// do. Env.Flags is the same with the command's synopsis and description.
func NewFlags(prog, cmd string, stdout, stderr io.Writer) *flag.FlagSet {
	return newFlags(&Command{Name: cmd}, prog+" "+cmd, stdout, stderr)
}

// newFlags makes the flag set of cmd, whose full name is name ("prov-core
// image build"). Its output stays stderr, where nothing but Parse would
// write (and Parse silences it); its Usage, the help, writes to stdout.
func newFlags(cmd *Command, name string, stdout, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		writeHelp(stdout, name, cmd)
		WriteFlags(stdout, fs)
	}
	return fs
}

// WriteFlags writes fs's flags, with their defaults, after a "flags:"
// line, if it has any.
func WriteFlags(w io.Writer, fs *flag.FlagSet) {
	n := 0
	fs.VisitAll(func(*flag.Flag) { n++ })
	if n == 0 {
		return
	}
	_, _ = fmt.Fprintf(w, "\nflags:\n")
	out := fs.Output()
	fs.SetOutput(w)
	fs.PrintDefaults()
	fs.SetOutput(out)
}

// writeHelp writes a command's synopsis and what it does.
func writeHelp(w io.Writer, name string, cmd *Command) {
	_, _ = fmt.Fprintf(w, "usage: %s\n", strings.TrimSpace(name+" "+cmd.Args))
	if cmd.Short != "" {
		_, _ = fmt.Fprintf(w, "\n%s.\n", strings.Join(wrap(cmd.Short, lineWidth), "\n"))
	}
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

// parse is fs.Parse with a bad flag made a usage error, and -h (or
// --help) printing the flag set's help (its Usage) and returning
// flag.ErrHelp, which exits 0. The flag set itself would print an error
// followed by its whole help, both on one writer: here an error is only
// returned (the dispatcher prints it and the command's usage line on
// stderr) and the help is printed only when asked for.
func parse(fs *flag.FlagSet, args []string) error {
	usage, out := fs.Usage, fs.Output()
	fs.Usage = func() {}
	fs.SetOutput(io.Discard)
	err := fs.Parse(args)
	fs.Usage = usage
	fs.SetOutput(out)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, flag.ErrHelp):
		if usage != nil {
			usage()
		}
		return err
	}
	return fmt.Errorf("%w: %w", ErrUsage, err)
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
