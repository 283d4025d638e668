package service_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/fleetprov/prov/core/config"
	"github.com/fleetprov/prov/core/coretest"
	"github.com/fleetprov/prov/core/service"
	"github.com/fleetprov/prov/core/store"
	"github.com/fleetprov/prov/pki"
	"github.com/fleetprov/prov/pki/ca/catest"
)

// Core refuses to start, naming what is wrong, when a key, the CA bundle,
// the signer, the machine-id secret or the store is missing or unusable.
func TestFailClosedAtStart(t *testing.T) {
	c := catest.Shared(t)
	dir := t.TempDir()
	base := coretest.Config(t, c.Deployment, dir, "")
	raw, err := os.ReadFile(base)
	if err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(dir, "missing")
	garbage := filepath.Join(dir, "garbage")
	if err := os.WriteFile(garbage, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	short := filepath.Join(dir, "short.secret")
	if err := os.WriteFile(short, []byte("too short"), 0o600); err != nil {
		t.Fatal(err)
	}
	lockedDir := t.TempDir()
	locked, err := store.Open(filepath.Join(lockedDir, "registry.db"), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = locked.Close() }()
	replace := func(old, new string) string { return strings.Replace(string(raw), old, new, 1) }
	for _, tc := range []struct {
		name, config, want string
	}{
		{"missing CA bundle", replace(c.RootCert(), missing), "trustBundle"},
		{"CA bundle is garbage", replace(c.RootCert(), garbage), "trustBundle"},
		{"missing TLS key", replace(c.IdentityKey(pki.RoleCore, "core"), missing), "tls"},
		{"TLS certificate of another role", replace(c.IdentityCert(pki.RoleCore, "core"), c.IdentityCert(pki.RoleAdmin, "admin")), "tls"},
		{"missing signer key", replace(c.IdentityKey(pki.RoleSigner, "images"), missing), "signer"},
		{"signer is not a signer", replace(c.IdentityCert(pki.RoleSigner, "images"), c.IdentityCert(pki.RoleCore, "core")), "signer"},
		{"missing machine-id secret", replace(filepath.Join(dir, "machine-id.secret"), missing), "machine-id secret"},
		{"short machine-id secret", replace(filepath.Join(dir, "machine-id.secret"), short), "machine-id secret"},
		{"store in a missing directory", replace(filepath.Join(dir, "registry.db"), filepath.Join(missing, "registry.db")), "store.path"},
		{"store locked by another core", replace(filepath.Join(dir, "registry.db"), filepath.Join(lockedDir, "registry.db")), "another prov-core"},
		{"bad hostname template", replace(`hostname: "{{.Board}}-{{.Serial}}"`, `hostname: "{{.Nope}}"`), "hostname"},
		{"template giving a bad hostname", replace(`hostname: "{{.Board}}-{{.Serial}}"`, `hostname: "Host_{{.Serial}}"`), "hostname"},
		{"group data outside the prefixes", replace(`/etc/prov/data/broker-url:`, `/etc/shadow:`), "/etc/shadow"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfgPath := filepath.Join(t.TempDir(), "core.yaml")
			if err := os.WriteFile(cfgPath, []byte(tc.config), 0o600); err != nil {
				t.Fatal(err)
			}
			cfg, err := config.Load(cfgPath)
			if err == nil {
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				defer cancel()
				err = service.Run(ctx, cfg, slog.New(slog.DiscardHandler), service.WithStarted(func(string, string) { cancel() }))
				if errors.Is(ctx.Err(), context.Canceled) && err == nil {
					t.Fatal("core started")
				}
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v does not name %q", err, tc.want)
			}
		})
	}
}

func TestConfigRefusals(t *testing.T) {
	c := catest.Shared(t)
	raw, err := os.ReadFile(coretest.Config(t, c.Deployment, t.TempDir(), ""))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := config.Parse(raw); err != nil {
		t.Fatalf("the test configuration does not parse: %v", err)
	}
	for name, tc := range map[string]struct{ yaml, want string }{
		"unknown key":   {string(raw) + "typo: 1\n", "typo"},
		"no groups":     {strings.Replace(string(raw), "  groups:", "  groupz:", 1), "groupz"},
		"bad listen":    {strings.Replace(string(raw), `listen: "127.0.0.1:0"`, `listen: "nowhere"`, 1), "listen"},
		"bad log level": {strings.Replace(string(raw), "level: debug", "level: loud", 1), "log.level"},
		"not YAML":      {"{{{", "bad configuration"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := config.Parse([]byte(tc.yaml))
			if !errors.Is(err, config.ErrBadConfig) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Parse: %v; want ErrBadConfig naming %q", err, tc.want)
			}
		})
	}
}

// SIGTERM: the binary finishes and exits 0, and the store is consistent.
func TestSIGTERMStopsCleanly(t *testing.T) {
	if testing.Short() {
		t.Skip("builds prov-core; skipped in -short")
	}
	bin := buildCore(t)
	c := catest.Shared(t)
	dir := t.TempDir()
	cmd, core, logs := startCore(t, bin, c, coretest.Config(t, c.Deployment, dir, ""))
	core.Register(t, "rpi4", coretest.RPi4(77))
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("exit after SIGTERM: %v\n%s", err, logs.String())
		}
	case <-time.After(20 * time.Second):
		_ = cmd.Process.Kill()
		t.Fatalf("no exit 20s after SIGTERM\n%s", logs.String())
	}
	s, err := store.Open(filepath.Join(dir, "registry.db"), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = s.Close() }()
	if err := s.Check(); err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains([]byte(logs.String()), []byte("prov-core serving")) {
		t.Errorf("no start log line:\n%s", logs.String())
	}
}
