package cmdline

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime/debug"
)

// Serve is the serve command of a long-running server (core, proxy): it
// parses --config FILE, loads and checks the configuration with load, logs
// JSON lines to Stderr at the level logLevel reads from it, applies the
// servers' garbage-collector target and runs the service until ctx ends.
func Serve[C any](load func(path string) (C, error), logLevel func(C) string, run func(context.Context, C, *slog.Logger) error) func(context.Context, *Env, []string) error {
	return func(ctx context.Context, env *Env, args []string) error {
		fs := env.Flags()
		path := fs.String("config", "", "configuration file (YAML)")
		if err := Parse(fs, args); err != nil {
			return err
		}
		if err := Required([2]string{"config", *path}); err != nil {
			return err
		}
		cfg, err := load(*path)
		if err != nil {
			return err
		}
		log, err := JSONLogger(logLevel(cfg), env.Stderr)
		if err != nil {
			return err
		}
		TuneServerGC()
		return run(ctx, cfg, log)
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
