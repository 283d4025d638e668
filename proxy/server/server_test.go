package server_test

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fleetprov/prov/core/contract/coreapi"
	"github.com/fleetprov/prov/proxy/auditlog"
	"github.com/fleetprov/prov/proxy/batchreport"
	"github.com/fleetprov/prov/proxy/contract/enrollapi"
	"github.com/fleetprov/prov/proxy/enroll"
	"github.com/fleetprov/prov/proxy/server"
	"github.com/fleetprov/prov/proxy/status"
	"github.com/fleetprov/prov/proxy/vouch"
)

// enroller answers what the test tells it and records what it was asked;
// the enrollment itself is tested against core and step-ca in
// proxy/service. Here: what each answer looks like on the wire.
type enroller struct {
	mu      sync.Mutex
	err     error
	got     []enrollapi.EnrollRequest
	sources []netip.Addr
	rejects []string
	// rejectErr, if set, is Reject's answer: a rule that comes first.
	rejectErr error
}

func (e *enroller) Enroll(_ context.Context, req enrollapi.EnrollRequest, source netip.Addr) (*enrollapi.EnrollResponse, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.got, e.sources = append(e.got, req), append(e.sources, source)
	if e.err != nil {
		return nil, e.err
	}
	return &enrollapi.EnrollResponse{Serial: "1a2b3c4d5e", Generation: 1}, nil
}

func (e *enroller) Challenge(req enrollapi.ChallengeRequest, source netip.Addr) (*enrollapi.ChallengeResponse, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.sources = append(e.sources, source)
	if e.err != nil {
		return nil, e.err
	}
	return &enrollapi.ChallengeResponse{ID: "c1", Nonce: []byte(req.HardwareID)}, nil
}

func (e *enroller) Reject(source netip.Addr, reason string) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.sources, e.rejects = append(e.sources, source), append(e.rejects, reason)
	if e.rejectErr != nil {
		return e.rejectErr
	}
	return &enroll.BadRequest{Reason: reason}
}

// factory is the factory network of these tests; do's requests come from
// it.
var factory = []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}

func newServer(t *testing.T, e *enroller, con *status.Console, ready func() error) *server.Server {
	t.Helper()
	return server.New(e, con, server.NewMetrics(), slog.New(slog.DiscardHandler), server.Options{Ready: ready, Timeout: time.Second, Viewers: factory,
		Report: func(batch string, format batchreport.Format) (string, []byte, error) {
			return "report-" + batch + "." + string(format) + ".zip", []byte("PK\x05\x06"), nil
		}})
}

func do(t *testing.T, s http.Handler, method, path, body string) (*httptest.ResponseRecorder, coreapi.Error) {
	t.Helper()
	return doFrom(t, s, "[::ffff:10.0.0.7]:50000", method, path, body)
}

// doFrom is do from another source address.
func doFrom(t *testing.T, s http.Handler, remote, method, path, body string) (*httptest.ResponseRecorder, coreapi.Error) {
	t.Helper()
	r := httptest.NewRequest(method, path, strings.NewReader(body))
	r.RemoteAddr = remote
	w := httptest.NewRecorder()
	s.ServeHTTP(w, r)
	var e coreapi.Error
	if w.Code >= 400 && (method != http.MethodHead || w.Body.Len() > 0) {
		if err := json.Unmarshal(w.Body.Bytes(), &e); err != nil || e.Code == "" || e.Message == "" {
			t.Fatalf("%s %s: %d with a body that is not the error shape: %q", method, path, w.Code, w.Body.String())
		}
	}
	return w, e
}

func TestEnrollAnswers(t *testing.T) {
	e := &enroller{}
	s := newServer(t, e, status.NewConsole(nil, nil), func() error { return nil })
	body := `{"board":"rpi4","hardwareId":"10000000deadbeef","csr":"-----BEGIN CERTIFICATE REQUEST-----"}`
	w, _ := do(t, s, "POST", "/v1/enroll", body)
	if w.Code != 200 || !strings.Contains(w.Body.String(), `"serial":"1a2b3c4d5e"`) {
		t.Fatalf("enrolled: %d %s", w.Code, w.Body.String())
	}
	if len(e.got) != 1 || e.got[0].HardwareID != "10000000deadbeef" || e.sources[0] != netip.MustParseAddr("10.0.0.7") {
		t.Fatalf("the enroller got %+v from %v (a v4-mapped source must be unmapped)", e.got, e.sources)
	}
	for _, tc := range []struct {
		name       string
		err        error
		status     int
		code       coreapi.ErrorCode
		retryAfter string
		message    string
	}{
		{"network", &vouch.Refusal{Rule: enrollapi.RuleNetwork, Reason: "10.0.0.7 is not on an allowed factory network"}, 403, "refused_network", "", "allowed factory network"},
		{"rate", &vouch.Refusal{Rule: enrollapi.RuleRate, Reason: "more than 5 enrollments a second", RetryAfter: 3}, 429, "refused_rate", "3", "a second"},
		{"quota", &vouch.Refusal{Rule: enrollapi.RuleQuota, Reason: "batch b1 has used its quota"}, 403, "refused_quota", "", "quota"},
		{"bad request", &enroll.BadRequest{Reason: "csr: want exactly one PEM CERTIFICATE REQUEST"}, 400, coreapi.CodeBadRequest, "", "csr:"},
		{"upstream", &enroll.Upstream{Step: "sign at step-ca", Err: errors.New("secret internal detail")}, 502, enrollapi.CodeUpstream, "5", "could not sign at step-ca"},
		{"anything else", errors.New("secret internal detail"), 500, coreapi.CodeInternal, "", "try again"},
	} {
		e.err = tc.err
		w, ae := do(t, s, "POST", "/v1/enroll", body)
		if w.Code != tc.status || ae.Code != tc.code || w.Header().Get("Retry-After") != tc.retryAfter || !strings.Contains(ae.Message, tc.message) {
			t.Errorf("%s: %d %+v Retry-After %q", tc.name, w.Code, ae, w.Header().Get("Retry-After"))
		}
		if strings.Contains(w.Body.String(), "secret") {
			t.Errorf("%s: internal detail sent: %s", tc.name, w.Body.String())
		}
	}
	// The challenge route: its answer, a refusal of the attestation (its
	// own rule), and a body that is not a challenge request (Reject).
	e.err = nil
	if w, _ := do(t, s, "POST", enrollapi.RouteEnrollChallenge.Path, `{"board":"rpi4","hardwareId":"10000000deadbeef","ekCert":"AQID"}`); w.Code != 200 || !strings.Contains(w.Body.String(), `"id":"c1"`) {
		t.Errorf("challenge: %d %s", w.Code, w.Body.String())
	}
	e.err = &vouch.Refusal{Rule: enrollapi.RuleAttestation, Reason: "the TPM's endorsement key certificate is not from a trusted manufacturer"}
	if w, ae := do(t, s, "POST", enrollapi.RouteEnrollChallenge.Path, `{"board":"rpi4"}`); w.Code != 403 || ae.Code != "refused_attestation" || !strings.Contains(ae.Message, "trusted manufacturer") {
		t.Errorf("challenge refused: %d %+v", w.Code, ae)
	}
	if w, ae := do(t, s, "POST", enrollapi.RouteEnrollChallenge.Path, `{"board":"rpi4","csr":""}`); w.Code != 400 || !strings.Contains(ae.Message, `"csr": not a field`) || len(e.rejects) != 1 {
		t.Errorf("challenge, bad body: %d %+v (rejects %v)", w.Code, ae, e.rejects)
	}
	e.err, e.rejects = nil, nil
	// A body that is not an enrollment request goes to Reject, which
	// records it and applies the network and rate rules first; the answer
	// names the member, the rule or the limit (issue 14: one generic 400).
	for _, tc := range []struct {
		body   string
		status int
		code   coreapi.ErrorCode
		names  string
	}{
		{"", 400, coreapi.CodeBadRequest, "empty"},
		{"not json", 400, coreapi.CodeBadRequest, "not valid JSON at byte 2"},
		{`{"board":"rpi4"}{"x":1}`, 400, coreapi.CodeBadRequest, "data after the JSON object"},
		{`{"board":"rpi4","extra":1}`, 400, coreapi.CodeBadRequest, `"extra": not a field of this request (its fields: board, hardwareId, csr`},
		{`{"BOARD":"rpi4"}`, 400, coreapi.CodeBadRequest, `"BOARD": not a field`},
		{`{"csr":"a","csr":"b"}`, 400, coreapi.CodeBadRequest, "csr: given more than once"},
		{`{"hardwareId":["1"]}`, 400, coreapi.CodeBadRequest, "hardwareId: want a string, not a JSON array"},
		{`{"board":"` + strings.Repeat("a", enrollapi.MaxRequestBody) + `"}`, 413, coreapi.CodeTooLarge, "over the limit of 65536 bytes"},
	} {
		w, ae := do(t, s, "POST", "/v1/enroll", tc.body)
		if w.Code != tc.status || ae.Code != tc.code || !strings.Contains(ae.Message, tc.names) {
			t.Errorf("body %.30q: %d %+v, want %d %s naming %q", tc.body, w.Code, ae, tc.status, tc.code, tc.names)
		}
	}
	if len(e.rejects) != 8 || !strings.Contains(e.rejects[3], `"extra"`) {
		t.Errorf("rejects recorded: %q", e.rejects)
	}
	// The network and rate rules still come first.
	e.rejectErr = &vouch.Refusal{Rule: enrollapi.RuleRate, Reason: "slow down", RetryAfter: 2}
	if w, ae := do(t, s, "POST", "/v1/enroll", "not json"); w.Code != 429 || ae.Code != enrollapi.RuleRate.Code() {
		t.Errorf("a bad body over the rate: %d %+v", w.Code, ae)
	}
}

func TestRoutes(t *testing.T) {
	con := status.NewConsole(nil, nil)
	ready := errors.New("step-ca does not answer")
	s := newServer(t, &enroller{}, con, func() error { return ready })
	if w, _ := do(t, s, "GET", "/healthz", ""); w.Code != 200 {
		t.Errorf("healthz %d", w.Code)
	}
	if w, ae := do(t, s, "GET", "/readyz", ""); w.Code != 503 || ae.Code != coreapi.CodeNotReady || ae.Message != ready.Error() {
		t.Errorf("readyz with step-ca away: %d %+v", w.Code, ae)
	}
	ready = nil
	if w, _ := do(t, s, "GET", "/readyz", ""); w.Code != 200 {
		t.Errorf("readyz %d", w.Code)
	}
	if w, ae := do(t, s, "GET", "/v1/enroll", ""); w.Code != 405 || ae.Code != coreapi.CodeMethodNotAllowed {
		t.Errorf("GET /v1/enroll: %d %+v", w.Code, ae)
	}
	if w, ae := do(t, s, "GET", "/status", ""); w.Code != 404 || ae.Code != coreapi.CodeNotFound {
		t.Errorf("unknown route: %d %+v", w.Code, ae)
	}
	do(t, s, "POST", "/v1/enroll", "")
	if w, _ := do(t, s, "GET", "/metrics", ""); w.Code != 200 || !strings.Contains(w.Body.String(), `prov_proxy_requests_total{route="enroll",status="4xx"} 1`) {
		t.Errorf("metrics: %d %.1500s", w.Code, w.Body.String())
	}
}

// The console's page is a fixed shell with its own script and style (the
// policy allows nothing inline and nothing from elsewhere); what it shows
// comes from /console/state, where device-controlled strings are JSON
// strings, which the script sets as text.
func TestConsolePage(t *testing.T) {
	con := status.NewConsole(nil, nil)
	now := time.Now()
	con.Observe(auditlog.Record{Seq: 1, Time: now, Result: auditlog.Enrolled, Source: "10.0.0.7", Board: "rpi4", Serial: "1a2b3c4d5e"})
	con.Observe(auditlog.Record{Seq: 2, Time: now, Result: auditlog.Refused, Source: "10.0.0.8", Board: `<script>alert(1)</script>`, Reason: "board: unknown"})
	s := newServer(t, &enroller{}, con, func() error { return nil })
	w, _ := do(t, s, "GET", "/", "")
	page := w.Body.String()
	if w.Code != 200 || !strings.Contains(page, `<script src="/console/console.js" defer></script>`) || strings.Contains(page, "1a2b3c4d5e") {
		t.Errorf("console page: %d\n%s", w.Code, page)
	}
	csp := w.Header().Get("Content-Security-Policy")
	for _, want := range []string{"default-src 'none'", "script-src 'self'", "connect-src 'self'"} {
		if !strings.Contains(csp, want) {
			t.Errorf("CSP %q lacks %q", csp, want)
		}
	}
	if strings.Contains(csp, "unsafe-inline") {
		t.Errorf("CSP %q allows inline code", csp)
	}
	for path, ct := range map[string]string{"/console/console.js": "text/javascript", "/console/console.css": "text/css"} {
		if w, _ := do(t, s, "GET", path, ""); w.Code != 200 || !strings.HasPrefix(w.Header().Get("Content-Type"), ct) || w.Body.Len() == 0 {
			t.Errorf("%s: %d %q", path, w.Code, w.Header().Get("Content-Type"))
		}
	}
	w, _ = do(t, s, "GET", "/console/state", "")
	var st status.State
	if err := json.Unmarshal(w.Body.Bytes(), &st); err != nil || w.Code != 200 {
		t.Fatalf("state: %d %v", w.Code, err)
	}
	if st.Counts[auditlog.Enrolled] != 1 || st.Counts[auditlog.Refused] != 1 || len(st.Recent) != 2 || st.Recent[1].Serial != "1a2b3c4d5e" {
		t.Errorf("state: %+v", st)
	}
	if strings.Contains(w.Body.String(), "<script>") {
		t.Errorf("the state carries markup unescaped: %s", w.Body.String())
	}
}

// Issue 13, finding 8: the status page and /metrics (serials, sources,
// reasons) answered any source. Now only the allowed networks; others get
// 403 in the one error shape, and nothing of the devices. /healthz and
// /readyz stay open.
func TestStatusAndMetricsOnlyForViewers(t *testing.T) {
	con := status.NewConsole(nil, nil)
	con.Observe(auditlog.Record{Time: time.Now(), Result: auditlog.Enrolled, Source: "10.0.0.7", Board: "rpi4", Serial: "1a2b3c4d5e"})
	s := newServer(t, &enroller{}, con, func() error { return nil })
	for _, remote := range []string{"192.0.2.1:40000", "[2001:db8::1]:40000", "[::ffff:192.0.2.1]:40000"} {
		for _, path := range []string{"/", "/metrics", "/console/state", "/console/events", "/console/console.js", "/console/report?batch=b&format=csv"} {
			w, ae := doFrom(t, s, remote, "GET", path, "")
			if w.Code != http.StatusForbidden || ae.Code != enrollapi.RuleNetwork.Code() {
				t.Errorf("%s from %s: %d %+v", path, remote, w.Code, ae)
			}
			if strings.Contains(w.Body.String(), "1a2b3c4d5e") || strings.Contains(w.Body.String(), "prov_proxy") {
				t.Errorf("%s from %s shows: %s", path, remote, w.Body.String())
			}
		}
		for _, path := range []string{"/healthz", "/readyz"} {
			if w, _ := doFrom(t, s, remote, "GET", path, ""); w.Code != http.StatusOK {
				t.Errorf("%s from %s: %d", path, remote, w.Code)
			}
		}
	}
	for _, path := range []string{"/", "/metrics"} {
		if w, _ := do(t, s, "GET", path, ""); w.Code != http.StatusOK || !strings.Contains(w.Body.String(), map[string]string{"/": "console.js", "/metrics": "prov_proxy"}[path]) {
			t.Errorf("%s from the factory network: %d", path, w.Code)
		}
	}
	// No networks at all: nobody.
	none := server.New(&enroller{}, con, server.NewMetrics(), slog.New(slog.DiscardHandler), server.Options{Ready: func() error { return nil }, Timeout: time.Second})
	if w, _ := do(t, none, "GET", "/", ""); w.Code != http.StatusForbidden {
		t.Errorf("with no networks: %d", w.Code)
	}
}

// Issue 14: the proxy had no HEAD and no Allow. From the route table, so
// that a new route is covered without a new test: every method a path does
// not serve is 405 with Allow and the JSON error body; HEAD is GET without
// the body; unknown paths are the JSON 404.
func TestEveryRoute(t *testing.T) {
	s := newServer(t, &enroller{}, status.NewConsole(nil, nil), func() error { return nil })
	for _, route := range enrollapi.Routes {
		allowed := coreapi.Methods(enrollapi.Routes, route.Path)
		for _, m := range []string{"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"} {
			if slices.Contains(allowed, m) {
				continue
			}
			w, ae := do(t, s, m, route.Path, "")
			if w.Code != http.StatusMethodNotAllowed || w.Header().Get("Allow") != strings.Join(allowed, ", ") ||
				ae.Code != coreapi.CodeMethodNotAllowed || w.Header().Get("Content-Type") != coreapi.MediaTypeJSON {
				t.Errorf("%s %s: %d Allow %q %+v", m, route.Path, w.Code, w.Header().Get("Allow"), ae)
			}
		}
		if route.Method != http.MethodGet {
			continue
		}
		if route.Name == enrollapi.RouteConsoleEvents.Name {
			// A GET streams until the console goes (proxy/service
			// TestConsoleStateAndEvents); HEAD answers at once.
			if head, _ := do(t, s, "HEAD", route.Path, ""); head.Code != http.StatusOK || head.Header().Get("Content-Type") != "text/event-stream" || head.Body.Len() != 0 {
				t.Errorf("HEAD %s: %d %q with %d bytes", route.Path, head.Code, head.Header().Get("Content-Type"), head.Body.Len())
			}
			continue
		}
		path := route.Path
		if route.Name == enrollapi.RouteConsoleReport.Name {
			path += "?batch=b&format=csv"
		}
		get, _ := do(t, s, "GET", path, "")
		head, _ := do(t, s, "HEAD", path, "")
		if get.Code != http.StatusOK || head.Code != get.Code || head.Body.Len() != 0 || head.Header().Get("Content-Type") != get.Header().Get("Content-Type") {
			t.Errorf("%s: GET %d %q, HEAD %d %q with %d bytes", route.Path, get.Code, get.Header().Get("Content-Type"), head.Code, head.Header().Get("Content-Type"), head.Body.Len())
		}
	}
	for _, path := range []string{"/status", "/v1", "/v1/enroll/x", "/healthz/"} {
		if w, ae := do(t, s, "GET", path, ""); w.Code != http.StatusNotFound || ae.Code != coreapi.CodeNotFound || w.Header().Get("Content-Type") != coreapi.MediaTypeJSON {
			t.Errorf("GET %s: %d %+v", path, w.Code, ae)
		}
	}
}
