package cli_test

import (
	"bytes"
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fleetprov/prov/core/cli"
	"github.com/fleetprov/prov/core/contract/coreapi"
	"github.com/fleetprov/prov/core/coretest"
	"github.com/fleetprov/prov/core/store"
	"github.com/fleetprov/prov/core/store/postgres"
	"github.com/fleetprov/prov/internal/testenv"
	"github.com/fleetprov/prov/internal/testenv/pgtest"
	"github.com/fleetprov/prov/pki/ca/catest"
)

// docs/operations.md's moving to PostgreSQL: a core's bbolt file copied
// into a PostgreSQL database with store migrate. Refused while the core
// runs (the file is locked), done once it is stopped and verified; a core
// on the copy serves every device at the same generation with
// byte-identical bundles and the same entity tags (those a paused rollout
// holds too), shows each the same (held or not, its latest report) and
// the rollout the same (its wave's states, the members held), and knows
// each hardware ID; a second migrate into the same database is refused;
// store verify names a record changed since, and exits non-zero.
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
	ro := pausedRollout(t, core, devices)
	type fetched struct {
		bundle []byte
		etag   string
		device *coreapi.Device
	}
	before := map[string]fetched{}
	for _, d := range devices[:5] {
		b, etag := core.Bundle(t, d.Serial)
		dev, err := admin.Device(ctx, d.Serial)
		if err != nil {
			t.Fatal(err)
		}
		before[d.Serial] = fetched{b, etag, dev}
	}
	if !before[devices[1].Serial].device.Held || before[devices[1].Serial].device.Report == nil || before[devices[0].Serial].device.Held {
		t.Fatalf("before migration: %+v, %+v", before[devices[0].Serial].device, before[devices[1].Serial].device)
	}
	roBefore, err := admin.Rollout(ctx, ro.ID)
	if err != nil {
		t.Fatal(err)
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
	admin = core.Client(t, core.Admin(t))
	for _, d := range devices[:5] {
		b, etag := core.Bundle(t, d.Serial)
		was := before[d.Serial]
		if !bytes.Equal(b, was.bundle) || etag != was.etag {
			t.Errorf("device %s after migration: %d bytes, etag %s; before %d bytes, etag %s", d.Serial, len(b), etag, len(was.bundle), was.etag)
		}
		if dev, err := admin.Device(ctx, d.Serial); err != nil || store.Diff(was.device, dev) != nil {
			t.Errorf("device %s after migration differs in %v (%v): %+v", d.Serial, store.Diff(was.device, dev), err, dev)
		}
	}
	if got, err := admin.Rollout(ctx, ro.ID); err != nil || store.Diff(roBefore, got) != nil {
		t.Errorf("rollout %d after migration differs in %v (%v): %+v, before %+v", ro.ID, store.Diff(roBefore, got), err, got, roBefore)
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

// pausedRollout starts a rollout of the default group with devices[0] as
// its canary, waits for core to release it, and has the canary report
// the new generation failed, so the rollout pauses on its own: the other
// members stay held at the data they had. devices[1], held, reports its
// generation healthy.
func pausedRollout(t *testing.T, core *coretest.Core, devices []*coreapi.Device) *coreapi.Rollout {
	t.Helper()
	ctx := t.Context()
	admin := core.Client(t, core.Admin(t))
	g, err := admin.Group(ctx, "default")
	if err != nil {
		t.Fatal(err)
	}
	ro, err := admin.StartRollout(ctx, "default", g.Version, coreapi.RolloutRequest{Set: map[string]string{"/etc/prov/data/motd": "bad"},
		Canary: []string{devices[0].Serial}})
	if err != nil {
		t.Fatal(err)
	}
	report := func(d *coreapi.Device, r coreapi.Report) {
		t.Helper()
		dev, err := admin.Device(ctx, d.Serial)
		if err != nil {
			t.Fatal(err)
		}
		r.Generation, r.BootID, r.At = dev.Generation, "boot-"+d.Serial, time.Now().UTC()
		if r.State == coreapi.StateHealthy {
			r.Running = dev.Generation
		}
		if _, err := core.Client(t, core.Enrolled(t, d.Serial, time.Hour)).Report(ctx, d.Serial, r); err != nil {
			t.Fatal(err)
		}
	}
	wait := func(what string, ok func(*coreapi.Rollout) bool) {
		t.Helper()
		if err := testenv.WaitFor(30*time.Second, func() error {
			got, err := admin.Rollout(ctx, ro.ID)
			if err == nil && !ok(got) {
				err = fmt.Errorf("rollout %d: %+v", ro.ID, got)
			}
			return err
		}); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	wait("the canary released", func(ro *coreapi.Rollout) bool { return ro.Released == 1 })
	report(devices[1], coreapi.Report{State: coreapi.StateHealthy})
	report(devices[0], coreapi.Report{State: coreapi.StateFailed, Running: devices[0].Generation, Error: "health check: exit status 1"})
	wait("the rollout paused", func(ro *coreapi.Rollout) bool { return ro.State == coreapi.RolloutPaused })
	return ro
}
