// Package cli is the prov-pki command line: init, ca, issue and revoke, the
// security admin's tools around step-ca.
package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"strings"
)

// Exit codes.
const (
	ExitOK    = 0
	ExitError = 1
	ExitUsage = 2
)

// errUsage marks errors that are the caller's command line, not the world.
var errUsage = errors.New("usage")

type command struct {
	name  string
	args  string
	short string
	run   func(ctx context.Context, env *env, args []string) error
}

// env is what commands write to.
type env struct {
	stdout, stderr io.Writer
	log            *slog.Logger
}

var commands = []command{
	{"init", "--dir DIR --password-file FILE --trust-domain DOMAIN --proxy NAME[=HOST,...] [flags]", "create a deployment's PKI: root, intermediate, step-ca configuration, provisioners, first certificates", runInit},
	{"ca", "--dir DIR --password-file FILE", "run step-ca in this process from the PKI's configuration until SIGTERM", runCA},
	{"issue", "--dir DIR --password-file FILE --role ROLE --name NAME [--host HOST]... [flags]", "issue a new admin, proxy, core or signer certificate through the running CA", runIssue},
	{"revoke", "--dir DIR --password-file FILE (--cert FILE | --serial N) [flags]", "revoke a certificate at the running CA", runRevoke},
}

// Main runs prov-pki with args (without the program name) and returns the
// exit code.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	e := &env{stdout: stdout, stderr: stderr, log: slog.New(slog.NewJSONHandler(stderr, nil)).With("component", "prov-pki")}
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage(stderr)
		return ExitUsage
	}
	for _, c := range commands {
		if c.name != args[0] {
			continue
		}
		err := c.run(ctx, e, args[1:])
		switch {
		case err == nil:
			return ExitOK
		case errors.Is(err, flag.ErrHelp):
			return ExitUsage
		case errors.Is(err, errUsage):
			_, _ = fmt.Fprintf(stderr, "prov-pki %s: %v\nusage: prov-pki %s %s\n", c.name, err, c.name, c.args)
			return ExitUsage
		default:
			_, _ = fmt.Fprintf(stderr, "prov-pki %s: %v\n", c.name, err)
			return ExitError
		}
	}
	_, _ = fmt.Fprintf(stderr, "prov-pki: unknown command %q\n", args[0])
	usage(stderr)
	return ExitUsage
}

func usage(w io.Writer) {
	_, _ = fmt.Fprintln(w, "prov-pki: the security admin's tools for a provisioning deployment's PKI (step-ca)")
	_, _ = fmt.Fprintln(w, "\nusage:")
	for _, c := range commands {
		_, _ = fmt.Fprintf(w, "  prov-pki %-7s %s\n  %17s%s\n", c.name, c.args, "", c.short)
	}
	_, _ = fmt.Fprintln(w, "\nRun prov-pki COMMAND -h for its flags.")
}

// newFlags makes a flag set whose errors come back as usage errors.
func newFlags(e *env, name string) *flag.FlagSet {
	fs := flag.NewFlagSet("prov-pki "+name, flag.ContinueOnError)
	fs.SetOutput(e.stderr)
	return fs
}

// parse parses args and refuses positional arguments.
func parse(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return fmt.Errorf("%w: %w", errUsage, err)
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("%w: unexpected argument %q", errUsage, fs.Arg(0))
	}
	return nil
}

// required returns a usage error naming the first empty flag.
func required(flags ...[2]string) error {
	for _, f := range flags {
		if f[1] == "" {
			return fmt.Errorf("%w: --%s is required", errUsage, f[0])
		}
	}
	return nil
}

// listFlag is a repeatable string flag; each value may also be a comma
// separated list.
type listFlag []string

func (l *listFlag) String() string { return strings.Join(*l, ",") }

func (l *listFlag) Set(v string) error {
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			*l = append(*l, s)
		}
	}
	return nil
}
