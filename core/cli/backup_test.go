package cli_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/fleetprov/prov/core/cli"
	"github.com/fleetprov/prov/core/contract/coreapi"
	"github.com/fleetprov/prov/core/coretest"
	"github.com/fleetprov/prov/core/store/postgres"
	"github.com/fleetprov/prov/internal/testenv/pgtest"
	"github.com/fleetprov/prov/pki"
	"github.com/fleetprov/prov/pki/ca/catest"
	"github.com/fleetprov/prov/pki/deployment"
)

// docs/operations.md's backup and restore: a hot backup through the admin
// API, checked, and a core started on it has every device as it was.
func TestBackupAndRestore(t *testing.T) {
	c := catest.Shared(t)
	dir := t.TempDir()
	core := coretest.Run(t, c, coretest.Config(t, c.Deployment, dir, ""), dir)
	var serials []string
	for i := range 3 {
		serials = append(serials, core.Register(t, "rpi4", coretest.RPi4(0xb00+i)).Serial)
	}
	id := core.IdentityDir(pki.RoleAdmin, deployment.DefaultAdminName)
	admin := func(url string, args ...string) (int, string, string) {
		return run(append([]string{"admin", "--core", url, "--identity", id}, args...)...)
	}
	if code, out, errs := admin(core.URL, "set", serials[0], "/etc/prov/data/site=lab-9"); code != cli.ExitOK {
		t.Fatalf("set: %d\n%s%s", code, out, errs)
	}
	backup := filepath.Join(t.TempDir(), "registry-backup.db")
	code, out, errs := admin(core.URL, "backup", "--out", backup)
	if code != cli.ExitOK || !strings.Contains(out, "3 devices") {
		t.Fatalf("backup: %d\n%s%s", code, out, errs)
	}
	// Only an admin gets the store.
	proxy := core.Client(t, core.Proxy(t))
	var se *coreapi.StatusError
	if _, err := proxy.Backup(context.Background(), io.Discard); !errors.As(err, &se) || se.Status != http.StatusForbidden {
		t.Fatalf("backup as the proxy: %v", err)
	}
	data, err := os.ReadFile(backup)
	if err != nil {
		t.Fatal(err)
	}

	// Restore: core stopped, the backup in place of its store, started.
	core.Stop()
	restored := t.TempDir()
	if err := os.WriteFile(filepath.Join(restored, "registry.db"), data, 0o600); err != nil {
		t.Fatal(err)
	}
	again := coretest.Run(t, c, coretest.Config(t, c.Deployment, restored, ""), restored)
	code, out, errs = admin(again.URL, "list")
	for _, s := range serials {
		if code != cli.ExitOK || !strings.Contains(out, s) {
			t.Fatalf("list after restore lacks %s: %d\n%s%s", s, code, out, errs)
		}
	}
	code, out, _ = admin(again.URL, "show", serials[0], "--json")
	var d coreapi.Device
	if code != cli.ExitOK || json.Unmarshal([]byte(out), &d) != nil || d.Generation != 2 || d.Data["/etc/prov/data/site"] != "lab-9" {
		t.Fatalf("show after restore: %d\n%s", code, out)
	}
}

// A core on PostgreSQL copies nothing: admin backup fails, writes no
// file, and says that pg_dump is the way (docs/operations.md).
func TestBackupOnPostgreSQLNamesPgDump(t *testing.T) {
	url := pgtest.New(t, fmt.Sprintf("registry-v%d", postgres.SchemaVersion()), postgres.Migrate)
	c := catest.Shared(t)
	dir := t.TempDir()
	core := coretest.Run(t, c, coretest.Config(t, c.Deployment, dir, fmt.Sprintf("store: {engine: postgres, url: %q, singleCore: true}\n", url)), dir)
	core.Register(t, "rpi4", coretest.RPi4(0xb10))
	backup := filepath.Join(t.TempDir(), "registry-backup.db")
	code, out, errs := run("admin", "--core", core.URL, "--identity", core.IdentityDir(pki.RoleAdmin, deployment.DefaultAdminName), "backup", "--out", backup)
	if code == cli.ExitOK || !strings.Contains(errs, "pg_dump") {
		t.Fatalf("backup of a core on PostgreSQL: %d\n%s%s\nwant a failure naming pg_dump", code, out, errs)
	}
	if _, err := os.Stat(backup); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a failed backup left a file: %v", err)
	}
}
