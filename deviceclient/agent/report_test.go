package agent_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/fleetprov/prov/core/contract/coreapi"
	"github.com/fleetprov/prov/core/coretest"
	"github.com/fleetprov/prov/deviceclient/agent"
	"github.com/fleetprov/prov/deviceclient/state"
	"github.com/fleetprov/prov/internal/testenv"
)

func reportRecord(t *testing.T, st *state.Dir) *state.ReportRecord {
	t.Helper()
	r, err := st.LatestReport()
	if err != nil || r == nil {
		t.Fatalf("no report: %v", err)
	}
	return r
}

// coreReport is the device's latest report as core keeps it.
func (f *fleet) coreReport(t *testing.T, serial string) *coreapi.DeviceReport {
	t.Helper()
	d, err := f.core.Client(t, f.core.Admin(t)).Device(ctx, serial)
	if err != nil {
		t.Fatal(err)
	}
	return d.Report
}

func sameAsKept(got *coreapi.DeviceReport, want coreapi.Report) bool {
	return got != nil && got.Generation == want.Generation && got.State == want.State && got.Running == want.Running &&
		got.BootID == want.BootID && got.Error == want.Error && got.At.Equal(want.At)
}

// The one-shot send to the real core: accepted and kept by core; refused
// for good (a 400: dropped, not retried); core away (pending, counted).
func TestSendReport(t *testing.T) {
	f := newFleet(t, "")
	st, dev := f.enroll(t, "1813BBBK0164")
	a := newAgent(t, st, agent.Options{})
	if sent, err := a.SendReport(ctx); sent || err != nil {
		t.Fatalf("nothing to send: %v %v", sent, err)
	}
	keep := func(r coreapi.Report) coreapi.Report {
		t.Helper()
		r.BootID, r.At = "b1", time.Now().UTC().Truncate(time.Millisecond)
		if ok, err := st.SetReport(r); !ok || err != nil {
			t.Fatalf("report not kept: %v %v", ok, err)
		}
		return r
	}
	good := keep(coreapi.Report{Generation: 1, State: coreapi.StateHealthy, Running: 1})
	if sent, err := a.SendReport(ctx); !sent || err != nil {
		t.Fatalf("send: %v %v", sent, err)
	}
	if r := reportRecord(t, st); !r.Sent || r.Refused != "" {
		t.Fatalf("record after core took it: %+v", r)
	}
	if got := f.coreReport(t, dev.Serial); !sameAsKept(got, good) {
		t.Fatalf("core keeps %+v, sent %+v", got, good)
	}
	if sent, err := a.SendReport(ctx); sent || err != nil {
		t.Fatalf("sent again: %v %v", sent, err)
	}

	// A report core refuses (a mounted generation that is not the one
	// running): dropped, core's unchanged.
	keep(coreapi.Report{Generation: 2, State: coreapi.StateMounted, Running: 1})
	if sent, err := a.SendReport(ctx); sent || err != nil {
		t.Fatalf("refused: %v %v", sent, err)
	}
	if r := reportRecord(t, st); !r.Sent || !strings.Contains(r.Refused, "400") {
		t.Fatalf("record after core refused it: %+v", r)
	}
	if got := f.coreReport(t, dev.Serial); !sameAsKept(got, good) {
		t.Fatalf("core keeps %+v after a refused report", got)
	}

	// Core away: pending, counted.
	f.core.Stop()
	keep(coreapi.Report{Generation: 3, State: coreapi.StateInstalled, Running: 1})
	if sent, err := a.SendReport(ctx); sent || err == nil {
		t.Fatalf("core away: %v %v", sent, err)
	}
	if r := reportRecord(t, st); r.Sent || r.Tries != 1 || r.LastError == "" {
		t.Fatalf("record with core away: %+v", r)
	}
	// A report about an older generation does not replace a newer one.
	if replaced, err := st.SetReport(coreapi.Report{Generation: 1, State: coreapi.StateHealthy, Running: 1, At: time.Now()}); replaced || err != nil {
		t.Fatalf("an older generation's report replaced the latest: %v %v", replaced, err)
	}
}

// The daemon sends the latest report, again with back-off while core is
// away, and only the latest: a report replaced while core was away is
// never sent.
func TestDaemonSendsTheLatestReport(t *testing.T) {
	f := newFleet(t, "")
	st, dev := f.enroll(t, "1813BBBK0165")
	f.core.Stop()
	at := time.Now().UTC().Truncate(time.Millisecond)
	if _, err := st.SetReport(coreapi.Report{Generation: 1, State: coreapi.StateMounted, Running: 1, BootID: "b", At: at}); err != nil {
		t.Fatal(err)
	}
	a := newAgent(t, st, agent.Options{PollInterval: time.Hour, WatchInterval: 20 * time.Millisecond,
		ReportBackoff: 20 * time.Millisecond, ReportBackoffCap: 100 * time.Millisecond})
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- a.Run(runCtx) }()
	defer func() {
		stop()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	if err := testenv.WaitFor(20*time.Second, func() error {
		if r := reportRecord(t, st); r.Tries < 3 {
			return fmt.Errorf("tried %d times", r.Tries)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	// Replaced by a newer state (as the mount unit, another process,
	// writes it), then core comes back on the same address.
	latest := coreapi.Report{Generation: 1, State: coreapi.StateHealthy, Running: 1, BootID: "b", At: at.Add(time.Second)}
	if _, err := st.SetReport(latest); err != nil {
		t.Fatal(err)
	}
	f.core = coretest.RunAt(t, f.core.CA, f.core.ConfigPath, f.core.Dir, strings.TrimPrefix(f.core.URL, "https://"))
	if err := testenv.WaitFor(20*time.Second, func() error {
		if r := reportRecord(t, st); !r.Sent {
			return fmt.Errorf("not sent: %+v", r)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if got := f.coreReport(t, dev.Serial); !sameAsKept(got, latest) {
		t.Fatalf("core keeps %+v, want the latest %+v", got, latest)
	}
}

// A quiet daemon reports again, so that core's fleet view does not count
// it stale: core's copy is the same report, heard of later.
func TestDaemonReportsAgainWhenQuiet(t *testing.T) {
	f := newFleet(t, "")
	st, dev := f.enroll(t, "1813BBBK0166")
	r := coreapi.Report{Generation: 1, State: coreapi.StateHealthy, Running: 1, BootID: "b", At: time.Now().UTC().Truncate(time.Millisecond)}
	if _, err := st.SetReport(r); err != nil {
		t.Fatal(err)
	}
	a := newAgent(t, st, agent.Options{PollInterval: time.Hour, WatchInterval: 20 * time.Millisecond, ReportEvery: 1100 * time.Millisecond})
	if _, err := a.SendReport(ctx); err != nil {
		t.Fatal(err)
	}
	first := f.coreReport(t, dev.Serial)
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- a.Run(runCtx) }()
	defer func() {
		stop()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	// Core stamps a report to the second: two heartbeats make it move.
	if err := testenv.WaitFor(20*time.Second, func() error {
		if got := f.coreReport(t, dev.Serial); !got.Received.After(first.Received) || !sameAsKept(got, r) {
			return fmt.Errorf("core has %+v, first received %s", got, first.Received)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}
