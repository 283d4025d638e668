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

	"github.com/fleetprov/prov/internal/cmdline"
)

// Exit codes.
const (
	ExitOK    = cmdline.ExitOK
	ExitError = cmdline.ExitError
	ExitUsage = cmdline.ExitUsage
)

var errUsage = cmdline.ErrUsage

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
		code := cmdline.Exit(stderr, "prov-pki", c.name, err)
		if errors.Is(err, errUsage) {
			_, _ = fmt.Fprintf(stderr, "usage: prov-pki %s %s\n", c.name, c.args)
		}
		return code
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

// newFlags makes a flag set for a prov-pki command.
func newFlags(e *env, name string) *flag.FlagSet { return cmdline.NewFlags("prov-pki", name, e.stderr) }

var (
	parse    = cmdline.Parse
	required = cmdline.Required
)

type listFlag = cmdline.List
