// Package cli is the prov-proxy command line: serve (the factory proxy),
// audit verify|list (the factory record) and audit report|verify-report
// (a batch's signed report).
package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"text/tabwriter"
	"time"

	"github.com/fleetprov/prov/internal/cmdline"
	"github.com/fleetprov/prov/proxy/auditlog"
	"github.com/fleetprov/prov/proxy/config"
	"github.com/fleetprov/prov/proxy/service"
)

// Exit codes.
const (
	ExitOK     = cmdline.ExitOK
	ExitError  = cmdline.ExitError
	ExitUsage  = cmdline.ExitUsage
	ExitBroken = 3 // audit verify: the chain is broken
)

var program = &cmdline.Program{
	Name:    "prov-proxy",
	Summary: "the factory enrollment proxy",
	Commands: []cmdline.Command{
		{Name: "serve", Args: "--config FILE", Short: "vouch for new devices and enroll them",
			Run: cmdline.Serve(config.Load, func(c *config.Config) string { return c.Log.Level },
				func(ctx context.Context, c *config.Config, log *slog.Logger) error { return service.Run(ctx, c, log) })},
		{Name: "audit", Sub: []cmdline.Command{
			{Name: "verify", Args: "--log FILE", Short: "check the factory record's hash chain", Run: verify},
			{Name: "list", Args: "--log FILE [--json] [--since DURATION] [--batch NAME]", Short: "print the factory record", Run: list},
			{Name: "report", Args: "--batch NAME --format csv|json --out FILE (--config FILE | --log FILE --cert FILE --key FILE --manifest FILE)",
				Short: "write a batch's report from the factory record, signed by the proxy's key (FILE.sig, chain in FILE.pem)", Run: report},
			{Name: "verify-report", Args: "--report FILE --root FILE [--log FILE]",
				Short: "check a batch report's signature, that a proxy signed it, and with --log that the record still holds its head", Run: verifyReport},
		}},
	},
}

// Program is prov-proxy's command line, for the test that tries every
// command's help and usage errors.
func Program() *cmdline.Program { return program }

// Main runs prov-proxy with args (without the program name).
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	return program.Main(ctx, args, stdout, stderr)
}

func verify(_ context.Context, env *cmdline.Env, args []string) error {
	fs := env.Flags()
	path := fs.String("log", "", "the factory record")
	if err := cmdline.Parse(fs, args); err != nil {
		return err
	}
	if err := cmdline.Required([2]string{"log", *path}); err != nil {
		return err
	}
	n, head, err := auditlog.Verify(*path)
	if err != nil {
		// Any failure to read the record through is a broken chain, the
		// missing file included: the record cannot be vouched for.
		return cmdline.WithExitCode(ExitBroken, err)
	}
	_, _ = fmt.Fprintf(env.Stdout, "ok: %d records, chain intact; head %s (note it elsewhere: the chain cannot show a cut tail)\n", n, head)
	return nil
}

func list(_ context.Context, env *cmdline.Env, args []string) error {
	fs := env.Flags()
	path := fs.String("log", "", "the factory record")
	asJSON := fs.Bool("json", false, "print JSON lines")
	since := fs.Duration("since", 0, "only the last DURATION (e.g. 24h)")
	batch := fs.String("batch", "", "only attempts of batch NAME")
	if err := cmdline.Parse(fs, args); err != nil {
		return err
	}
	if err := cmdline.Required([2]string{"log", *path}); err != nil {
		return err
	}
	from := time.Time{}
	if *since > 0 {
		from = time.Now().Add(-*since)
	}
	tw := tabwriter.NewWriter(env.Stdout, 0, 0, 2, ' ', 0)
	if !*asJSON {
		_, _ = fmt.Fprintln(tw, "SEQ\tTIME\tRESULT\tSOURCE\tBOARD\tSERIAL\tCERT SERIAL\tBATCH\tREASON")
	}
	enc := json.NewEncoder(env.Stdout)
	err := auditlog.Read(*path, func(r auditlog.Record) error {
		if r.Time.Before(from) || (*batch != "" && r.Batch != *batch) {
			return nil
		}
		if *asJSON {
			return enc.Encode(r)
		}
		_, err := fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.Seq, r.Time.Format(time.RFC3339), r.Result, r.Source, r.Board, r.Serial, r.CertSerial, r.Batch, r.Reason)
		return err
	})
	if ferr := tw.Flush(); err == nil {
		err = ferr
	}
	return err
}
