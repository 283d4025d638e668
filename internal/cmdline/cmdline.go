// Package cmdline holds the command-line conventions every prov-* binary
// follows: exit codes, usage errors, repeatable and required flags, how an
// error becomes an exit code, and the servers' log and garbage-collector
// settings. Every binary, the device's included, links it, so it uses the
// standard library only; it is plumbing that belongs to no one part, hence
// internal/.
package cmdline

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime/debug"
	"strings"
)

// Exit codes shared by every binary. A binary may add its own above these.
const (
	ExitOK    = 0
	ExitError = 1
	ExitUsage = 2
)

// ErrUsage marks an error in the caller's command line.
var ErrUsage = errors.New("usage")

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
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return fmt.Errorf("%w: %w", ErrUsage, err)
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("%w: unexpected argument %q", ErrUsage, fs.Arg(0))
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

// Exit prints err as "<prog> <cmd>: <err>" and returns its exit code: 0 for
// nil, ExitUsage for -h and usage errors, ExitError otherwise.
func Exit(stderr io.Writer, prog, cmd string, err error) int {
	switch {
	case err == nil:
		return ExitOK
	case errors.Is(err, flag.ErrHelp):
		return ExitUsage
	case errors.Is(err, ErrUsage):
		_, _ = fmt.Fprintf(stderr, "%s %s: %v\n", prog, cmd, err)
		return ExitUsage
	default:
		_, _ = fmt.Fprintf(stderr, "%s %s: %v\n", prog, cmd, err)
		return ExitError
	}
}

// JSONLogger is the servers' log: slog JSON lines on w at the named level
// ("debug", "info", "warn", "error"); a bad level names the config key.
func JSONLogger(level string, w io.Writer) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("log.level: %w", err)
	}
	return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: l})), nil
}

// ServerGCPercent is the garbage collector's target for the long-running
// servers (core, proxy) unless GOGC is set: their live heaps are a few
// MiB, so the default (100) collects very often under load; measured with
// the enrollment benchmark, 400 cuts about a sixth of the CPU an
// enrollment costs, for a few MiB more memory.
const ServerGCPercent = 400

// TuneServerGC applies ServerGCPercent unless the operator set GOGC.
func TuneServerGC() {
	if _, set := os.LookupEnv("GOGC"); !set {
		debug.SetGCPercent(ServerGCPercent)
	}
}
