package cli_test

import (
	"bytes"
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/fleetprov/prov/core/cli"
	"github.com/fleetprov/prov/core/contract/coreapi"
	"github.com/fleetprov/prov/core/coretest"
	"github.com/fleetprov/prov/core/store/postgres"
	"github.com/fleetprov/prov/internal/testenv/pgtest"
	"github.com/fleetprov/prov/pki/ca/catest"
)

// docs/operations.md's moving to PostgreSQL: a core's bbolt file copied
// into a PostgreSQL database with store migrate. Refused while the core
// runs (the file is locked), done once it is stopped and verified; a core
// on the copy serves every device at the same generation with
// byte-identical bundles and the same entity tags, and knows each hardware
// ID; a second migrate into the same database is refused; store verify
// names a record changed since, and exits non-zero.
func TestStoreMigrate(t *testing.T) {
	c := catest.Shared(t)
	dir := t.TempDir()
	core := coretest.Run(t, c, coretest.Config(t, c.Deployment, dir, ""), dir)
	var devices []*coreapi.Device
	for i := range 6 {
		devices = append(devices, core.Register(t, "rpi4", coretest.RPi4(0xa00+i)))
	}
	admin := core.Client(t, core.Admin(t))
	ctx := context.Background()
	if _, err := admin.SetDeviceData(ctx, devices[0].Serial, devices[0].Generation, coreapi.DataChange{Set: map[string]string{"/etc/prov/data/site": "lab-9"}}); err != nil {
		t.Fatal(err)
	}
	g, err := admin.Group(ctx, "default")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := admin.SetGroupData(ctx, "default", g.Version, coreapi.DataChange{Set: map[string]string{"/etc/prov/data/motd": "hi"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.Revoke(ctx, devices[5].Serial, "retired"); err != nil {
		t.Fatal(err)
	}
	type fetched struct {
		bundle []byte
		etag   string
	}
	before := map[string]fetched{}
	for _, d := range devices[:5] {
		b, etag := core.Bundle(t, d.Serial)
		before[d.Serial] = fetched{b, etag}
	}

	url := pgtest.New(t, fmt.Sprintf("registry-v%d", postgres.SchemaVersion()), postgres.Migrate)
	from := "bbolt:" + filepath.Join(dir, "registry.db")
	code, out, errs := run("store", "migrate", "--from", from, "--to", url)
	if code == cli.ExitOK || !strings.Contains(errs, "is in use") || !strings.Contains(errs, "stop the prov-core") {
		t.Fatalf("migrate while core runs: exit %d\n%s%s", code, out, errs)
	}
	core.Stop()
	code, out, errs = run("store", "migrate", "--from", from, "--to", url)
	if code != cli.ExitOK || !strings.Contains(out, "verified: 2 groups, 6 devices") {
		t.Fatalf("migrate: exit %d\n%s%s", code, out, errs)
	}
	t.Log(out)

	core = coretest.Run(t, c, coretest.Config(t, c.Deployment, dir, fmt.Sprintf("store: {engine: postgres, url: %q, singleCore: true}\n", url)), dir)
	for _, d := range devices[:5] {
		b, etag := core.Bundle(t, d.Serial)
		if was := before[d.Serial]; !bytes.Equal(b, was.bundle) || etag != was.etag {
			t.Errorf("device %s after migration: %d bytes, etag %s; before %d bytes, etag %s", d.Serial, len(b), etag, len(was.bundle), was.etag)
		}
	}
	if again := core.Register(t, "rpi4", coretest.RPi4(0xa01)); again.Serial != devices[1].Serial {
		t.Errorf("the hardware ID of %s registered again on the copy: %s", devices[1].Serial, again.Serial)
	}
	if d, err := core.Client(t, core.Admin(t)).Device(ctx, devices[5].Serial); err != nil || d.Status != coreapi.StatusRevoked {
		t.Errorf("the revoked device on the copy: %+v %v", d, err)
	}

	code, out, errs = run("store", "migrate", "--from", from, "--to", url)
	if code == cli.ExitOK || !strings.Contains(errs, "already holds a registry") || !strings.Contains(errs, "nothing was written") {
		t.Fatalf("a second migrate into the same database: exit %d\n%s%s", code, out, errs)
	}
	admin = core.Client(t, core.Admin(t))
	d, err := admin.Device(ctx, devices[2].Serial)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := admin.Reprovision(ctx, d.Serial); err != nil {
		t.Fatal(err)
	}
	code, out, errs = run("store", "verify", "--from", from, "--to", url)
	if code == cli.ExitOK || !strings.Contains(out, "MISMATCH device "+d.Serial+": Version differs") || !strings.Contains(errs, "differs from the source") {
		t.Fatalf("verify after a change of the copy: exit %d\n%s%s", code, out, errs)
	}
}
