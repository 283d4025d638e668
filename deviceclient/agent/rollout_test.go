package agent_test

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fleetprov/prov/core/contract/coreapi"
	"github.com/fleetprov/prov/core/coretest"
	"github.com/fleetprov/prov/deviceclient/agent"
	"github.com/fleetprov/prov/deviceclient/mount"
	"github.com/fleetprov/prov/deviceclient/state"
	"github.com/fleetprov/prov/internal/testenv"
	"github.com/fleetprov/prov/proxy/proxytest"
)

// A rollout with real device clients: four boards, each its agent's
// daemon with its image mounted over its own stand-in /etc and a health
// check that refuses a broker URL with a typo (as a service that cannot
// connect would). The bad change pauses at its canary, which falls back
// to its previous data and reports why; no other board ever mounts it;
// the abort moves the canary forward to the old data. The fixed change
// goes through every wave, each board healthy at its new generation.
func TestRolloutWithRealDevices(t *testing.T) {
	core := coretest.Start(t, "rollouts: {tick: 100ms}\n")
	f := &fleet{core: core, proxy: proxytest.StartWith(t, core, "", local)}
	admin := core.Client(t, core.Admin(t))
	type board struct {
		serial string
		st     *state.Dir
		l      *mount.Layout
	}
	var boards []board
	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	for i := range 4 {
		st, dev := f.enroll(t, fmt.Sprintf("1813BBBK%04d", 170+i))
		l := layout(t)
		broker := filepath.Join(l.Target, "prov", "data", "broker")
		a := newAgent(t, st, agent.Options{Layout: l, PollInterval: 500 * time.Millisecond, WatchInterval: 50 * time.Millisecond,
			ReportBackoff: 50 * time.Millisecond, Health: agent.Health{Timeout: 10 * time.Second,
				Command: []string{"/bin/sh", "-c", "! grep -q typo " + broker + " 2>/dev/null || { echo cannot connect to $(cat " + broker + "); exit 1; }"}}})
		if _, err := a.Mount(ctx, true); err != nil {
			t.Fatal(err)
		}
		d := make(chan error, 1)
		go func() { d <- a.Run(runCtx) }()
		// Registered after the state directory's and the mount's: cleanups
		// run last first, so the daemon stops before they are closed.
		t.Cleanup(func() {
			stop()
			if err := <-d; err != nil {
				t.Error(err)
			}
		})
		boards = append(boards, board{dev.Serial, st, l})
	}
	// Every board reports its first generation healthy.
	ready := func() error {
		for _, b := range boards {
			d, err := admin.Device(ctx, b.serial)
			if err != nil {
				return err
			}
			if r := d.Report; r == nil || r.State != coreapi.StateHealthy || r.Generation != d.Generation {
				return fmt.Errorf("%s: generation %d, report %+v", b.serial, d.Generation, r)
			}
		}
		return nil
	}
	if err := testenv.WaitFor(30*time.Second, ready); err != nil {
		t.Fatal(err)
	}
	before := map[string]uint64{}
	for _, b := range boards {
		before[b.serial] = mounted(t, b.l)
	}
	start := func(broker string) *coreapi.Rollout {
		g, err := admin.Group(ctx, "default")
		if err != nil {
			t.Fatal(err)
		}
		ro, err := admin.StartRollout(ctx, "default", g.Version, coreapi.RolloutRequest{Set: map[string]string{"/etc/prov/data/broker": broker + "\n"},
			Canary: []string{boards[0].serial}, Percent: []float64{50}})
		if err != nil {
			t.Fatal(err)
		}
		return ro
	}
	wait := func(ro *coreapi.Rollout, state coreapi.RolloutState) *coreapi.Rollout {
		t.Helper()
		if err := testenv.WaitFor(60*time.Second, func() error {
			var err error
			if ro, err = admin.Rollout(ctx, ro.ID); err != nil {
				return err
			}
			if ro.State != state {
				return fmt.Errorf("rollout %d %s (%s), released %d", ro.ID, ro.State, ro.Reason, ro.Released)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		return ro
	}

	ro := wait(start("tls://broker.typo:8883"), coreapi.RolloutPaused)
	if !strings.Contains(ro.Reason, boards[0].serial) || !strings.Contains(ro.Reason, "cannot connect to tls://broker.typo:8883") || ro.Released != 1 {
		t.Fatalf("paused: %+v", ro)
	}
	canary := boards[0]
	if err := testenv.WaitFor(20*time.Second, func() error {
		if got := mounted(t, canary.l); got != before[canary.serial] {
			return fmt.Errorf("the canary mounts %d", got)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if bad := badGenerations(t, canary.st); len(bad) != 1 || bad[0] != before[canary.serial]+1 {
		t.Fatalf("the canary's bad generations %v", bad)
	}
	for _, b := range boards[1:] {
		if got := mounted(t, b.l); got != before[b.serial] || generation(t, b.st) != before[b.serial] {
			t.Fatalf("%s mounts %d, high-water %d: a held board received the change", b.serial, got, generation(t, b.st))
		}
	}
	if _, err := admin.RolloutAction(ctx, coreapi.RouteAbortRollout, ro.ID, ro.Rev, "broker URL typo"); err != nil {
		t.Fatal(err)
	}
	// The canary moves forward to the old data, healthy.
	if err := testenv.WaitFor(30*time.Second, ready); err != nil {
		t.Fatal(err)
	}
	if got := mounted(t, canary.l); got != before[canary.serial]+2 {
		t.Fatalf("the canary after the abort mounts %d", got)
	}

	wait(start("tls://broker:8883"), coreapi.RolloutDone)
	if err := testenv.WaitFor(30*time.Second, ready); err != nil {
		t.Fatal(err)
	}
	for _, b := range boards {
		if got := mounted(t, b.l); got <= before[b.serial] {
			t.Fatalf("%s mounts %d after the rollout", b.serial, got)
		}
	}
}

func badGenerations(t *testing.T, st *state.Dir) []uint64 {
	t.Helper()
	bad, err := st.BadGenerations()
	if err != nil {
		t.Fatal(err)
	}
	var out []uint64
	for _, b := range bad {
		out = append(out, b.Generation)
	}
	return out
}
