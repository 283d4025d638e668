package agent_test

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/fleetprov/prov/core/contract/coreapi"
	"github.com/fleetprov/prov/deviceclient/agent"
	"github.com/fleetprov/prov/deviceclient/state"
	"github.com/fleetprov/prov/internal/testenv"
)

// reportEndpoint poses as core's report route over mTLS (core's own
// certificate, the device's required), answering each report with the
// status the test sets, and keeps what it accepted. Bundles are "not
// modified".
type reportEndpoint struct {
	mu       sync.Mutex
	status   int
	got      []coreapi.Report // accepted, in order
	attempts int
}

func (e *reportEndpoint) setStatus(s int) { e.mu.Lock(); e.status = s; e.mu.Unlock() }

func (e *reportEndpoint) accepted() []coreapi.Report {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]coreapi.Report(nil), e.got...)
}

func startReportEndpoint(t *testing.T, f *fleet, serial string) (*reportEndpoint, string) {
	t.Helper()
	e := &reportEndpoint{status: http.StatusOK}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/devices/{serial}/bundle", func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusNotModified) })
	mux.HandleFunc("POST "+coreapi.RouteReport.Path, func(w http.ResponseWriter, r *http.Request) {
		var rep coreapi.Report
		if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, coreapi.MaxReportBody)).Decode(&rep); err != nil || rep.Check() != nil || r.PathValue("serial") != serial {
			http.Error(w, fmt.Sprintf("bad report: %v %v", err, rep.Check()), http.StatusBadRequest)
			return
		}
		e.mu.Lock()
		defer e.mu.Unlock()
		e.attempts++
		if e.status != http.StatusOK {
			w.WriteHeader(e.status)
			return
		}
		e.got = append(e.got, rep)
		_ = json.NewEncoder(w).Encode(coreapi.DeviceReport{Report: rep, Received: time.Now().UTC()})
	})
	srv := httptest.NewUnstartedServer(mux)
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{coreCert(t, f.core.CA)}, ClientAuth: tls.RequireAnyClientCert, MinVersion: tls.VersionTLS13}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	_, port, _ := net.SplitHostPort(srv.Listener.Addr().String())
	return e, "https://localhost:" + port
}

func pendingReport(t *testing.T, st *state.Dir) *state.ReportRecord {
	t.Helper()
	r, err := st.LatestReport()
	if err != nil || r == nil {
		t.Fatalf("no report: %v", err)
	}
	return r
}

// The one-shot send: accepted, refused for good (4xx: dropped, not
// retried), or failed for now (5xx, 429: pending, counted).
func TestSendReport(t *testing.T) {
	f := newFleet(t, "")
	st, dev := f.enroll(t, "1813BBBK0164")
	e, url := startReportEndpoint(t, f, dev.Serial)
	pointAt(t, st, url)
	a := newAgent(t, st, agent.Options{Health: agent.Health{BootID: (&bootIDs{"b1"}).get}})
	if sent, err := a.SendReport(ctx); sent || err != nil {
		t.Fatalf("nothing to send: %v %v", sent, err)
	}
	report := func(gen uint64, s coreapi.ReportState) coreapi.Report {
		r := coreapi.Report{Generation: gen, State: s, Running: gen, BootID: "b1", At: time.Now().UTC()}
		if _, err := st.SetReport(r); err != nil {
			t.Fatal(err)
		}
		return r
	}
	gen := uint64(1)
	for _, tc := range []struct {
		status      int
		sent, refus bool
	}{
		{http.StatusServiceUnavailable, false, false},
		{http.StatusTooManyRequests, false, false},
		{http.StatusConflict, true, true},
		{http.StatusOK, true, false},
	} {
		gen++ // a report about a newer generation each time: it replaces the last
		t.Run(http.StatusText(tc.status), func(t *testing.T) {
			e.setStatus(tc.status)
			r := report(gen, coreapi.StateHealthy)
			sent, err := a.SendReport(ctx)
			rec := pendingReport(t, st)
			if sent != (tc.status == http.StatusOK) || (err != nil) != !tc.sent || rec.Sent != tc.sent || (rec.Refused != "") != tc.refus {
				t.Fatalf("sent %v err %v, record %+v", sent, err, rec)
			}
			if !tc.sent && rec.Tries != 1 {
				t.Fatalf("a failed send is not counted: %+v", rec)
			}
			if got := e.accepted(); tc.status == http.StatusOK && (len(got) != 1 || got[0].Generation != r.Generation) {
				t.Fatalf("core has %+v", got)
			}
		})
	}
	// A report about an older generation does not replace a newer one.
	if replaced, err := st.SetReport(coreapi.Report{Generation: 1, State: coreapi.StateHealthy, Running: 1, At: time.Now()}); replaced || err != nil {
		t.Fatalf("an older generation's report replaced the latest: %v %v", replaced, err)
	}
}

// The daemon sends the latest report, again with back-off while core
// fails, and only the latest: a report replaced while core was away is
// never sent.
func TestDaemonSendsTheLatestReport(t *testing.T) {
	f := newFleet(t, "")
	st, dev := f.enroll(t, "1813BBBK0165")
	e, url := startReportEndpoint(t, f, dev.Serial)
	pointAt(t, st, url)
	e.setStatus(http.StatusServiceUnavailable)
	if _, err := st.SetReport(coreapi.Report{Generation: 7, State: coreapi.StateInstalled, Running: 1, BootID: "b", At: time.Now().UTC()}); err != nil {
		t.Fatal(err)
	}
	a := newAgent(t, st, agent.Options{PollInterval: time.Hour, WatchInterval: 20 * time.Millisecond,
		ReportBackoff: 20 * time.Millisecond, ReportBackoffCap: 100 * time.Millisecond})
	runCtx, stop := contextWithCancel()
	done := make(chan error, 1)
	go func() { done <- a.Run(runCtx) }()
	defer func() {
		stop()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	if err := testenv.WaitFor(20*time.Second, func() error {
		if r := pendingReport(t, st); r.Tries < 3 {
			return fmt.Errorf("tried %d times", r.Tries)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	// Replaced by a newer state (written by another process, say the
	// mount unit), then core comes back.
	if _, err := st.SetReport(coreapi.Report{Generation: 7, State: coreapi.StateHealthy, Running: 7, BootID: "b", At: time.Now().UTC()}); err != nil {
		t.Fatal(err)
	}
	e.setStatus(http.StatusOK)
	if err := testenv.WaitFor(20*time.Second, func() error {
		if r := pendingReport(t, st); !r.Sent {
			return fmt.Errorf("not sent: %+v", r)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	got := e.accepted()
	if len(got) != 1 || got[0].State != coreapi.StateHealthy || got[0].Running != 7 {
		t.Fatalf("core received %+v, want only the latest (healthy)", got)
	}
}

func contextWithCancel() (context.Context, context.CancelFunc) { return context.WithCancel(ctx) }
