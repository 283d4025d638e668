package service_test

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/fleetprov/prov/core/config"
	"github.com/fleetprov/prov/core/contract/coreapi"
	"github.com/fleetprov/prov/core/coretest"
	"github.com/fleetprov/prov/internal/testenv"
)

// board is a device as core's API sees it: its own mTLS identity, which
// reports what it runs.
type board struct {
	serial string
	cert   *tls.Certificate
	client *coreapi.Client
}

// at is the board calling another core (one started again).
func (b board) at(t *testing.T, core *coretest.Core) board {
	b.client = core.Client(t, b.cert)
	return b
}

// boards registers and enrolls n devices at core (as the proxy does).
func boards(t *testing.T, core *coretest.Core, first, n int) []board {
	t.Helper()
	var out []board
	for i := range n {
		d := core.Register(t, "rpi4", coretest.RPi4(first+i))
		cert := core.Enrolled(t, d.Serial, time.Hour)
		out = append(out, board{serial: d.Serial, cert: cert, client: core.Client(t, cert)})
	}
	return out
}

// generation is what core has for the board now, asked as the board.
func (b board) generation(t *testing.T) uint64 {
	t.Helper()
	d, err := b.client.Device(ctx, b.serial)
	if err != nil {
		t.Fatalf("%s: %v", b.serial, err)
	}
	return d.Generation
}

// report sends a report of the board's current generation.
func (b board) report(t *testing.T, state coreapi.ReportState, msg string) {
	t.Helper()
	gen := b.generation(t)
	running := gen
	if state == coreapi.StateFailed {
		running = gen - 1
	}
	if _, err := b.client.Report(ctx, b.serial, coreapi.Report{Generation: gen, State: state, Running: running, BootID: "boot-1",
		At: time.Now().UTC(), Error: msg}); err != nil {
		t.Fatalf("%s reports %s: %v", b.serial, state, err)
	}
}

// waitRollout waits until the rollout satisfies ok.
func waitRollout(t *testing.T, admin *coreapi.Client, id uint64, what string, ok func(*coreapi.Rollout) bool) *coreapi.Rollout {
	t.Helper()
	var ro *coreapi.Rollout
	err := testenv.WaitFor(20*time.Second, func() error {
		var err error
		if ro, err = admin.Rollout(ctx, id); err != nil {
			return err
		}
		if !ok(ro) {
			return fmt.Errorf("rollout %d: %s, released %d of %d (%s)", id, ro.State, ro.Released, len(ro.Waves), ro.Reason)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("waiting for %s: %v", what, err)
	}
	return ro
}

// Reports reach core over the device's own mTLS identity only: another
// serial is 404 and changes nothing; a malformed report is 400 naming the
// field; the admin's view and the fleet view count what was reported.
func TestDeviceReports(t *testing.T) {
	core := coretest.Start(t, "")
	bs := boards(t, core, 0x500, 3)
	a, b := bs[0], bs[1]
	a.report(t, coreapi.StateHealthy, "")
	// A device reporting for another serial: 404, and b has no report.
	_, err := a.client.Report(ctx, b.serial, coreapi.Report{Generation: 1, State: coreapi.StateFailed, BootID: "x", At: time.Now()})
	var se *coreapi.StatusError
	if !errors.As(err, &se) || se.Status != http.StatusNotFound {
		t.Fatalf("a report for another serial: %v", err)
	}
	admin := core.Client(t, core.Admin(t))
	if d, err := admin.Device(ctx, b.serial); err != nil || d.Report != nil {
		t.Fatalf("b after a forged report: %+v %v", d.Report, err)
	}
	for _, bad := range []struct {
		r     coreapi.Report
		field string
	}{
		{coreapi.Report{Generation: 1, State: "fine", At: time.Now()}, "state"},
		{coreapi.Report{State: coreapi.StateHealthy, At: time.Now()}, "generation"},
		{coreapi.Report{Generation: 1, State: coreapi.StateFailed, At: time.Now(), Error: strings.Repeat("x", coreapi.MaxReportError+1)}, "error"},
		{coreapi.Report{Generation: 1, State: coreapi.StateHealthy, Running: 2, At: time.Now()}, "running"},
	} {
		_, err := a.client.Report(ctx, a.serial, bad.r)
		if !errors.As(err, &se) || se.Status != http.StatusBadRequest || !strings.Contains(se.Body.Message, bad.field) {
			t.Errorf("a report with a bad %s: %v", bad.field, err)
		}
	}
	// Only a device may report.
	if _, err := admin.Report(ctx, a.serial, coreapi.Report{Generation: 1, State: coreapi.StateHealthy, At: time.Now()}); !errors.As(err, &se) || se.Status != http.StatusForbidden {
		t.Fatalf("an admin reporting: %v", err)
	}
	b.report(t, coreapi.StateFailed, "health check: exit status 1: broker unreachable")
	d, err := admin.Device(ctx, a.serial)
	if err != nil || d.Report == nil || d.Report.State != coreapi.StateHealthy || d.Report.Received.IsZero() {
		t.Fatalf("admin's view of a: %+v %v", d.Report, err)
	}
	f, err := admin.Fleet(ctx, "default", 0)
	if err != nil {
		t.Fatal(err)
	}
	if f.Members != 3 || f.States[coreapi.StateHealthy] != 1 || f.States[coreapi.StateFailed] != 1 || f.States["none"] != 1 ||
		f.Current != 1 || f.Stale != 1 || len(f.Failed) != 1 || f.Failed[0].Serial != b.serial || f.Generations["1"] != 1 || f.Generations["0"] != 1 {
		t.Fatalf("fleet %+v", f)
	}
	events, err := admin.DeviceAudit(ctx, b.serial, 0)
	if err != nil || events[len(events)-1].Action != "report" || events[len(events)-1].Detail["state"] != "failed" {
		t.Fatalf("b's audit %+v %v", events, err)
	}
	metrics := get(t, core.HTTP(t, nil), core.URL+"/metrics")
	for _, line := range []string{`prov_core_fleet_devices{group="default",state="healthy"} 1`, `prov_core_fleet_devices{group="default",state="failed"} 1`,
		`prov_core_fleet_devices{group="default",state="none"} 1`, `prov_core_fleet_stale_devices{group="default"} 1`} {
		if !strings.Contains(metrics, line) {
			t.Errorf("metrics lack %s", line)
		}
	}
}

// A rollout through its waves on both engines: the canary first, held
// members untouched until their wave, the next wave once the one before
// reports healthy; a failure pauses it with the reason; an abort moves the
// released members forward to the old data and leaves the held ones
// alone. A second rollout pauses when its canary does not report in time,
// and, resumed and reported healthy, finishes.
func TestRolloutThroughWaves(t *testing.T) {
	for _, engine := range []string{config.EngineBolt, config.EnginePostgres} {
		t.Run(engine, func(t *testing.T) {
			rs := newCores(t, 1, engine)
			core := rs.run(t)[0]
			admin := core.Client(t, core.Admin(t))
			bs := boards(t, core, 0x600, 7)
			before := map[string]uint64{}
			for _, b := range bs {
				before[b.serial] = b.generation(t)
			}
			g, err := admin.Group(ctx, "default")
			if err != nil {
				t.Fatal(err)
			}
			ro, err := admin.StartRollout(ctx, "default", g.Version, coreapi.RolloutRequest{
				Set: map[string]string{"/etc/prov/data/broker": "tls://broker.typo:8883\n"}, Canary: []string{bs[0].serial}, Percent: []float64{50}})
			if err != nil {
				t.Fatal(err)
			}
			if len(ro.Waves) != 3 || ro.Waves[1].Size != 3 || !ro.Waves[2].Rest {
				t.Fatalf("waves %+v", ro.Waves)
			}
			ro = waitRollout(t, admin, ro.ID, "the canary released", func(r *coreapi.Rollout) bool { return r.Released == 1 })
			if bs[0].generation(t) != before[bs[0].serial]+1 {
				t.Fatalf("canary at %d", bs[0].generation(t))
			}
			for _, b := range bs[1:] {
				if b.generation(t) != before[b.serial] {
					t.Fatalf("%s moved before its wave", b.serial)
				}
			}
			// Not released further until the canary is healthy.
			if r, err := admin.Rollout(ctx, ro.ID); err != nil || r.Released != 1 || r.Status[0].Pending != 1 {
				t.Fatalf("before the canary reports: %+v %v", r, err)
			}
			bs[0].report(t, coreapi.StateHealthy, "")
			ro = waitRollout(t, admin, ro.ID, "wave 1 released", func(r *coreapi.Rollout) bool { return r.Released == 2 })
			var wave1, held []board
			for _, b := range bs[1:] {
				if b.generation(t) == before[b.serial]+1 {
					wave1 = append(wave1, b)
				} else {
					held = append(held, b)
				}
			}
			if len(wave1) != 3 || len(held) != 3 || ro.Held != 3 {
				t.Fatalf("wave 1 moved %d, %d held (%d by core)", len(wave1), len(held), ro.Held)
			}
			// One member of wave 1 fails: the rollout pauses, saying who and why.
			wave1[0].report(t, coreapi.StateFailed, "health check: exit status 1: cannot reach tls://broker.typo:8883")
			wave1[1].report(t, coreapi.StateHealthy, "")
			ro = waitRollout(t, admin, ro.ID, "a pause", func(r *coreapi.Rollout) bool { return r.State == coreapi.RolloutPaused })
			if !strings.Contains(ro.Reason, "1 of 3 failed") || !strings.Contains(ro.Reason, wave1[0].serial) || !strings.Contains(ro.Reason, "broker.typo") {
				t.Fatalf("pause reason %q", ro.Reason)
			}
			// Abort: the released move forward to the old data; the held never moved.
			ro, err = admin.RolloutAction(ctx, coreapi.RouteAbortRollout, ro.ID, ro.Rev, "broker URL typo")
			if err != nil || ro.State != coreapi.RolloutAborted {
				t.Fatalf("abort %+v %v", ro, err)
			}
			for _, b := range append([]board{bs[0]}, wave1...) {
				d, err := admin.Device(ctx, b.serial)
				if err != nil || d.Generation != before[b.serial]+2 || d.Data["/etc/prov/data/broker"] != "" {
					t.Fatalf("released %s after the abort: generation %d data %v %v", b.serial, d.Generation, d.Data, err)
				}
			}
			for _, b := range held {
				d, err := admin.Device(ctx, b.serial)
				if err != nil || d.Generation != before[b.serial] || !d.Held || d.Data["/etc/prov/data/broker"] != "" {
					t.Fatalf("held %s after the abort: %+v %v", b.serial, d, err)
				}
			}
			// A second rollout whose canary does not report: paused at its timeout.
			g, err = admin.Group(ctx, "default")
			if err != nil {
				t.Fatal(err)
			}
			ro2, err := admin.StartRollout(ctx, "default", g.Version, coreapi.RolloutRequest{Set: map[string]string{"/etc/prov/data/broker": "tls://broker:8883\n"},
				Canary: []string{bs[1].serial}, Sizes: []int{2}, Policy: coreapi.RolloutPolicy{WaveTimeoutSeconds: 1}})
			if err != nil {
				t.Fatal(err)
			}
			ro2 = waitRollout(t, admin, ro2.ID, "a pause at the timeout", func(r *coreapi.Rollout) bool { return r.State == coreapi.RolloutPaused })
			if ro2.Released != 1 || !strings.Contains(ro2.Reason, "0 of 1 healthy after 1s") {
				t.Fatalf("timeout pause %+v", ro2)
			}
			// Resumed, with every released member reporting healthy: done.
			if _, err := admin.RolloutAction(ctx, coreapi.RouteResumeRollout, ro2.ID, ro2.Rev, "canary was offline"); err != nil {
				t.Fatal(err)
			}
			reported := map[string]uint64{}
			waitRollout(t, admin, ro2.ID, "done", func(r *coreapi.Rollout) bool {
				for _, b := range bs {
					d, err := admin.Device(ctx, b.serial)
					if err == nil && !d.Held && reported[b.serial] != d.Generation {
						b.report(t, coreapi.StateHealthy, "")
						reported[b.serial] = d.Generation
					}
				}
				return r.State == coreapi.RolloutDone
			})
			f, err := admin.Fleet(ctx, "default", 0)
			if err != nil || f.Current != len(bs) || f.Held != 0 || f.Rollout != nil {
				t.Fatalf("fleet after the rollout %+v %v", f, err)
			}
			for _, b := range bs {
				d, err := admin.Device(ctx, b.serial)
				if err != nil || d.Data["/etc/prov/data/broker"] != "tls://broker:8883\n" || d.Generation <= before[b.serial] {
					t.Fatalf("%s after the rollout %+v %v", b.serial, d, err)
				}
			}
			events, err := admin.GroupAudit(ctx, "default", 0)
			if err != nil {
				t.Fatal(err)
			}
			var actions []string
			for _, e := range events {
				if strings.HasPrefix(e.Action, "rollout") {
					actions = append(actions, e.Action)
				}
			}
			want := "[rollout start rollout wave rollout wave rollout pause rollout abort rollout start rollout wave rollout pause rollout resume rollout wave rollout wave rollout done]"
			if fmt.Sprint(actions) != want {
				t.Fatalf("group audit %v\nwant %s", actions, want)
			}
		})
	}
}

// kill -9 of the only core in the middle of a rollout: started again, it
// carries the rollout on from where the store says it is.
func TestKill9DuringARollout(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and kills prov-core; skipped in -short")
	}
	bin := buildCore(t)
	rs := newReplicaSet(t, 1)
	cmds, cores, _ := rs.runProcesses(t, bin)
	core := cores[0]
	admin := core.Client(t, core.Admin(t))
	bs := boards(t, core, 0x700, 6)
	g, err := admin.Group(ctx, "default")
	if err != nil {
		t.Fatal(err)
	}
	ro, err := admin.StartRollout(ctx, "default", g.Version, coreapi.RolloutRequest{Set: map[string]string{"/etc/prov/data/k": "v\n"}, Sizes: []int{2}})
	if err != nil {
		t.Fatal(err)
	}
	ro = waitRollout(t, admin, ro.ID, "wave 0", func(r *coreapi.Rollout) bool { return r.Released == 1 })
	kill9(t, cmds[0])
	cmds, cores, _ = rs.runProcesses(t, bin)
	t.Cleanup(func() { _ = cmds[0].Process.Kill() })
	core = cores[0]
	admin = core.Client(t, core.Admin(t))
	if again, err := admin.Rollout(ctx, ro.ID); err != nil || again.Released != 1 || again.State != coreapi.RolloutRunning || again.Held != 4 {
		t.Fatalf("after kill -9: %+v %v", again, err)
	}
	for i := range bs {
		bs[i] = bs[i].at(t, core)
	}
	reported := map[string]uint64{}
	waitRollout(t, admin, ro.ID, "done after the restart", func(r *coreapi.Rollout) bool {
		for _, b := range bs {
			d, err := admin.Device(ctx, b.serial)
			if err == nil && !d.Held && reported[b.serial] != d.Generation {
				b.report(t, coreapi.StateHealthy, "")
				reported[b.serial] = d.Generation
			}
		}
		return r.State == coreapi.RolloutDone
	})
}
