package service_test

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/fleetprov/prov/core/contract/coreapi"
	"github.com/fleetprov/prov/core/coretest"
	"github.com/fleetprov/prov/core/store/postgres"
	"github.com/fleetprov/prov/internal/testenv/pgtest"
	"github.com/fleetprov/prov/pki/ca/catest"
)

// docs/operations.md's backup and restore on PostgreSQL, with Debian's
// own pg_dump and pg_restore: a dump taken while core serves, restored
// into a new, empty database; a core on the restored database lists the
// same devices at the same generations and serves byte-identical bundles
// with the same entity tags.
func TestPgDumpAndRestore(t *testing.T) {
	url := pgtest.New(t, fmt.Sprintf("registry-v%d", postgres.SchemaVersion()), postgres.Migrate)
	c := catest.Shared(t)
	dir := t.TempDir()
	core := coretest.Run(t, c, coretest.Config(t, c.Deployment, dir, fmt.Sprintf("store: {engine: postgres, url: %q, singleCore: true}\n", url)), dir)
	var serials []string
	for i := range 4 {
		serials = append(serials, core.Register(t, "rpi4", coretest.RPi4(0xf00+i)).Serial)
	}
	admin := core.Client(t, core.Admin(t))
	ctx := context.Background()
	d, err := admin.Device(ctx, serials[0])
	if err != nil {
		t.Fatal(err)
	}
	if _, err := admin.SetDeviceData(ctx, d.Serial, d.Generation, coreapi.DataChange{Set: map[string]string{"/etc/prov/data/site": "lab-3"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.Revoke(ctx, serials[3], "retired"); err != nil {
		t.Fatal(err)
	}
	list := func(core *coretest.Core) []coreapi.Device {
		page, err := core.Client(t, core.Admin(t)).List(ctx, "", 100)
		if err != nil || page.Next != "" {
			t.Fatalf("list: %+v %v", page, err)
		}
		return page.Devices
	}
	before := list(core)
	bundles := map[string][]byte{}
	etags := map[string]string{}
	for _, s := range serials[:3] {
		bundles[s], etags[s] = core.Bundle(t, s)
	}

	dump := filepath.Join(t.TempDir(), "prov.dump")
	pg(t, "pg_dump", "--format=custom", "--file="+dump, "--dbname="+url)
	restored := pgtest.Empty(t)
	pg(t, "pg_restore", "--no-owner", "--exit-on-error", "--dbname="+restored, dump)
	core.Stop()

	core = coretest.Run(t, c, coretest.Config(t, c.Deployment, dir, fmt.Sprintf("store: {engine: postgres, url: %q, singleCore: true}\n", restored)), dir)
	after := list(core)
	if len(after) != len(before) {
		t.Fatalf("restored: %d devices, were %d", len(after), len(before))
	}
	for i := range before {
		if b, a := before[i], after[i]; a.Serial != b.Serial || a.Generation != b.Generation || a.Status != b.Status {
			t.Errorf("restored device %s at generation %d (%s), was %s at %d (%s)", a.Serial, a.Generation, a.Status, b.Serial, b.Generation, b.Status)
		}
	}
	for _, s := range serials[:3] {
		if b, etag := core.Bundle(t, s); !bytes.Equal(b, bundles[s]) || etag != etags[s] {
			t.Errorf("restored device %s: bundle of %d bytes, etag %s; was %d bytes, %s", s, len(b), etag, len(bundles[s]), etags[s])
		}
	}
	// The restored database goes on: a new device, an existing one again.
	core.Register(t, "rpi4", coretest.RPi4(0xf10))
	if again := core.Register(t, "rpi4", coretest.RPi4(0xf01)); again.Serial != serials[1] {
		t.Errorf("a hardware ID registered again on the restored database: %s, was %s", again.Serial, serials[1])
	}
}

// pg runs one of Debian's PostgreSQL programs.
func pg(t *testing.T, prog string, args ...string) {
	t.Helper()
	out, err := exec.Command(filepath.Join(pgtest.BinDir, prog), args...).CombinedOutput() //nolint:gosec // fixed programs, the test's own arguments
	if err != nil {
		t.Fatalf("%s: %v\n%s", prog, err, out)
	}
}
