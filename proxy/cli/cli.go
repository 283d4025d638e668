// Package cli is the prov-proxy command line: serve (the factory proxy) and
// audit verify|list (the factory record).
package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
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

const usageText = `prov-proxy: the factory enrollment proxy

usage:
  prov-proxy serve --config FILE          vouch for new devices and enroll them
  prov-proxy audit verify --log FILE      check the factory record's hash chain
  prov-proxy audit list --log FILE [--json] [--since DURATION]
                                          print the factory record
`

// Main runs prov-proxy with args (without the program name).
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	switch {
	case len(args) >= 1 && args[0] == "serve":
		return cmdline.Exit(stderr, "prov-proxy", "serve", serve(ctx, args[1:], stderr))
	case len(args) >= 2 && args[0] == "audit" && args[1] == "verify":
		err := verify(args[2:], stdout, stderr)
		if err != nil && !isUsage(err) {
			_, _ = fmt.Fprintf(stderr, "prov-proxy audit verify: %v\n", err)
			return ExitBroken
		}
		return cmdline.Exit(stderr, "prov-proxy", "audit verify", err)
	case len(args) >= 2 && args[0] == "audit" && args[1] == "list":
		return cmdline.Exit(stderr, "prov-proxy", "audit list", list(args[2:], stdout, stderr))
	}
	_, _ = fmt.Fprint(stderr, usageText)
	return ExitUsage
}

func isUsage(err error) bool { return cmdline.Exit(io.Discard, "", "", err) == ExitUsage }

func serve(ctx context.Context, args []string, stderr io.Writer) error {
	fs := cmdline.NewFlags("prov-proxy", "serve", stderr)
	path := fs.String("config", "", "configuration file (YAML)")
	if err := cmdline.Parse(fs, args); err != nil {
		return err
	}
	if err := cmdline.Required([2]string{"config", *path}); err != nil {
		return err
	}
	cfg, err := config.Load(*path)
	if err != nil {
		return err
	}
	log, err := cmdline.JSONLogger(cfg.Log.Level, stderr)
	if err != nil {
		return err
	}
	cmdline.TuneServerGC()
	return service.Run(ctx, cfg, log)
}

func verify(args []string, stdout, stderr io.Writer) error {
	fs := cmdline.NewFlags("prov-proxy", "audit verify", stderr)
	path := fs.String("log", "", "the factory record")
	if err := cmdline.Parse(fs, args); err != nil {
		return err
	}
	if err := cmdline.Required([2]string{"log", *path}); err != nil {
		return err
	}
	n, head, err := auditlog.Verify(*path)
	if err != nil {
		return err
	}
	_, _ = fmt.Fprintf(stdout, "ok: %d records, chain intact; head %s (note it elsewhere: the chain cannot show a cut tail)\n", n, head)
	return nil
}

func list(args []string, stdout, stderr io.Writer) error {
	fs := cmdline.NewFlags("prov-proxy", "audit list", stderr)
	path := fs.String("log", "", "the factory record")
	asJSON := fs.Bool("json", false, "print JSON lines")
	since := fs.Duration("since", 0, "only the last DURATION (e.g. 24h)")
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
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	if !*asJSON {
		_, _ = fmt.Fprintln(tw, "SEQ\tTIME\tRESULT\tSOURCE\tBOARD\tSERIAL\tCERT SERIAL\tBATCH\tREASON")
	}
	enc := json.NewEncoder(stdout)
	err := auditlog.Read(*path, func(r auditlog.Record) error {
		if r.Time.Before(from) {
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
