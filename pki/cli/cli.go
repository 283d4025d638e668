// Package cli is the prov-pki command line: init, ca, issue, widen and
// revoke, the security admin's tools around step-ca.
package cli

import (
	"context"
	"flag"
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

// env is what prov-pki's commands run with: where they write, and the
// JSON log that ca writes beside step-ca's own.
type env struct {
	stdout, stderr io.Writer
	log            *slog.Logger
	cmd            *cmdline.Env
}

// withEnv makes a prov-pki command one of the table's, building its env
// from the table's.
func withEnv(run func(ctx context.Context, e *env, args []string) error) func(context.Context, *cmdline.Env, []string) error {
	return func(ctx context.Context, ce *cmdline.Env, args []string) error {
		return run(ctx, &env{stdout: ce.Stdout, stderr: ce.Stderr, log: slog.New(slog.NewJSONHandler(ce.Stderr, nil)).With("component", "prov-pki"), cmd: ce}, args)
	}
}

var program = &cmdline.Program{
	Name:    "prov-pki",
	Summary: "the security admin's tools for a provisioning deployment's PKI (step-ca)",
	Commands: []cmdline.Command{
		{Name: "init", Args: "--dir DIR --password-file FILE --trust-domain DOMAIN --proxy NAME[=HOST,...] [flags]", Short: "create a deployment's PKI: root, intermediate, step-ca configuration, provisioners, first certificates", Run: withEnv(runInit)},
		{Name: "ca", Args: "--dir DIR --password-file FILE", Short: "run step-ca in this process from the PKI's configuration until SIGTERM", Run: withEnv(runCA)},
		{Name: "issue", Args: "--dir DIR --password-file FILE --role ROLE --name NAME [--host HOST]... [flags]", Short: "issue a new admin, proxy, core or signer certificate through the running CA", Run: withEnv(runIssue)},
		{Name: "widen", Args: "--dir DIR --password-file FILE --host HOST... [--root-key FILE]", Short: "permit more core and proxy hosts: re-issue the intermediate, with the root key, with wider name constraints", Run: withEnv(runWiden)},
		{Name: "revoke", Args: "--dir DIR --password-file FILE (--cert FILE | --serial N) [flags]", Short: "revoke a certificate at the running CA", Run: withEnv(runRevoke)},
	},
}

// Program is prov-pki's command line, for the test that tries every
// command's help and usage errors.
func Program() *cmdline.Program { return program }

// Main runs prov-pki with args (without the program name) and returns the
// exit code.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	return program.Main(ctx, args, stdout, stderr)
}

// newFlags makes the flag set of the prov-pki command e runs.
func newFlags(e *env) *flag.FlagSet { return e.cmd.Flags() }

var (
	parse    = cmdline.Parse
	required = cmdline.Required
)

type listFlag = cmdline.List
