package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/fleetprov/prov/core/store"
	"github.com/fleetprov/prov/core/store/postgres"
	"github.com/fleetprov/prov/internal/cmdline"
)

// prov-core store: moving a registry between engines, offline.

const storeArgs = "--from bbolt:PATH --to postgres://… [--sample N]"

func storeCommands() []cmdline.Command {
	return []cmdline.Command{
		{Name: "migrate", Args: storeArgs,
			Short: "copy a bbolt registry into an empty PostgreSQL database (core stopped), then verify the copy", Run: storeMigrate},
		{Name: "verify", Args: storeArgs,
			Short: "compare a PostgreSQL registry with the bbolt one it was copied from: counts, holds, rollouts and sampled devices, field by field", Run: storeVerify},
	}
}

// defaultSample is how many devices verification compares by default:
// every one of a small fleet, a thousand spread over a large one.
const defaultSample = 1000

type storeFlags struct{ from, to string }

func parseStoreFlags(env *cmdline.Env, args []string) (storeFlags, int, error) {
	fs := env.Flags()
	from := fs.String("from", "", "the registry to copy, bbolt:PATH (its prov-core stopped)")
	to := fs.String("to", "", "the PostgreSQL database, postgres://… (libpq's URL, as store.url takes it)")
	sample := fs.Int("sample", defaultSample, "how many devices to compare field by field, with their audit trails and reports")
	if err := cmdline.Parse(fs, args); err != nil {
		return storeFlags{}, 0, err
	}
	if err := cmdline.Required([2]string{"from", *from}, [2]string{"to", *to}); err != nil {
		return storeFlags{}, 0, err
	}
	if !strings.HasPrefix(*from, "bbolt:") || len(*from) == len("bbolt:") {
		return storeFlags{}, 0, fmt.Errorf("%w: --from: want bbolt:PATH", cmdline.ErrUsage)
	}
	if u, err := url.Parse(*to); err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
		return storeFlags{}, 0, fmt.Errorf("%w: --to: want a postgres:// URL", cmdline.ErrUsage)
	}
	if *sample < 1 {
		return storeFlags{}, 0, fmt.Errorf("%w: --sample: at least 1", cmdline.ErrUsage)
	}
	return storeFlags{from: strings.TrimPrefix(*from, "bbolt:"), to: *to}, *sample, nil
}

// redacted is a database URL as messages show it: without its password.
func redacted(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "the --to URL"
	}
	return u.Redacted()
}

// openSource opens a bbolt registry for reading, refusing one a running
// core holds: a copy of a registry being written would be neither the
// old state nor the new.
func openSource(path string) (*store.Bolt, error) {
	if _, err := os.Stat(path); err != nil {
		return nil, fmt.Errorf("--from: %w", err)
	}
	src, err := store.Open(path, store.Options{ReadOnly: true, LockTimeout: 500 * time.Millisecond, CacheDevices: -1})
	if errors.Is(err, store.ErrLocked) {
		return nil, fmt.Errorf("--from %s is in use (%w): stop the prov-core that serves it first; store migrate copies a registry offline", path, err)
	}
	if err != nil {
		return nil, fmt.Errorf("--from: %w", err)
	}
	return src, nil
}

func openTarget(ctx context.Context, connString string) (*postgres.Store, error) {
	dst, err := postgres.Open(ctx, connString, postgres.Options{NotACore: true})
	if err != nil {
		return nil, fmt.Errorf("--to %s: %w", redacted(connString), err)
	}
	return dst, nil
}

// storeRun opens both registries for a store command and runs fn with
// them.
func storeRun(ctx context.Context, env *cmdline.Env, args []string, fn func(f storeFlags, src *store.Bolt, dst *postgres.Store, sample int) error) error {
	f, sample, err := parseStoreFlags(env, args)
	if err != nil {
		return err
	}
	src, err := openSource(f.from)
	if err != nil {
		return err
	}
	defer func() { _ = src.Close() }()
	dst, err := openTarget(ctx, f.to)
	if err != nil {
		return err
	}
	defer func() { _ = dst.Close() }()
	return fn(f, src, dst, sample)
}

func storeMigrate(ctx context.Context, env *cmdline.Env, args []string) error {
	return storeRun(ctx, env, args, func(f storeFlags, src *store.Bolt, dst *postgres.Store, sample int) error {
		start := time.Now()
		n, err := dst.Import(ctx, src)
		if errors.Is(err, postgres.ErrNotEmpty) {
			return fmt.Errorf("--to %s: %w; nothing was written (migrate into a new, empty database; prov-core store verify compares an earlier copy)", redacted(f.to), err)
		}
		if err != nil {
			return fmt.Errorf("copy into %s: %w; nothing was written", redacted(f.to), err)
		}
		_, _ = fmt.Fprintf(env.Stdout, "copied %s from %s into %s in %s\n", n, f.from, redacted(f.to), time.Since(start).Round(time.Millisecond))
		return verify(env.Stdout, src, dst, sample)
	})
}

func storeVerify(ctx context.Context, env *cmdline.Env, args []string) error {
	return storeRun(ctx, env, args, func(_ storeFlags, src *store.Bolt, dst *postgres.Store, sample int) error {
		return verify(env.Stdout, src, dst, sample)
	})
}

// verify compares the copy with its source and prints what differs; a
// difference is ErrMismatch (a non-zero exit).
func verify(w io.Writer, src, dst store.Copy, sample int) error {
	v, err := store.Verify(src, dst, sample)
	if err != nil {
		return fmt.Errorf("verify: %w", err)
	}
	for _, m := range v.Mismatches {
		_, _ = fmt.Fprintf(w, "MISMATCH %s\n", m)
	}
	if !v.OK() {
		return fmt.Errorf("%w: %d mismatches (the first %d above); do not start core on the copy", ErrMismatch, len(v.Mismatches), len(v.Mismatches))
	}
	_, _ = fmt.Fprintf(w, "verified: %s in both; %d devices (held or not, with their audit trails and reports), every group, kept group version "+
		"and rollout (the waves of the active ones), every hold and wave member, and the CA revocation queue compared\n", v.Target, v.Sampled)
	return nil
}
