package service_test

import (
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fleetprov/prov/core/contract/coreapi"
	"github.com/fleetprov/prov/core/coretest"
	"github.com/fleetprov/prov/internal/testenv"
	"github.com/fleetprov/prov/pki"
	"github.com/fleetprov/prov/pki/ca/catest"
	"github.com/fleetprov/prov/pki/deployment"
	"github.com/fleetprov/prov/pki/pkitest"
	"github.com/fleetprov/prov/proxy/contract/enrollapi"
	"github.com/fleetprov/prov/proxy/proxytest"
	"github.com/fleetprov/prov/proxy/service"
)

// identity loads a certificate and key of the deployment.
func identity(t *testing.T, c *catest.CA, role pki.Role, name string) tls.Certificate {
	t.Helper()
	cert, err := tls.LoadX509KeyPair(c.IdentityCert(role, name), c.IdentityKey(role, name))
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

// localhost names a loopback URL by the host name the certificates carry.
func localhost(u string) string { return strings.Replace(u, "127.0.0.1", "localhost", 1) }

// hostPort is a URL's host:port.
func hostPort(t *testing.T, u string) string {
	t.Helper()
	p, err := url.Parse(u)
	if err != nil {
		t.Fatal(err)
	}
	return p.Host
}

// Issue 13, finding 8, as found: the proxy started, and answered /readyz,
// with core unreachable or with a core of another deployment; a recorder
// holding core's certificate was accepted in step-ca's place and received
// a token. Now it refuses to start, naming which upstream and why, and a
// server with the wrong certificate ends the wait at once (the default
// startupTimeout of a minute is not spent on it).
func TestStartRefusedUnlessUpstreamsAnswerAsThemselves(t *testing.T) {
	core := coretest.Start(t, "")
	c := core.CA
	coreURL := localhost(core.URL)
	down := fmt.Sprintf("https://localhost:%d", testenv.RefusingPort(t))
	other := catest.Start(t)
	dir := t.TempDir()
	otherCore := coretest.Run(t, other, coretest.Config(t, other.Deployment, dir, ""), dir)
	coreAsCA := pkitest.NewRecorder(t, identity(t, c, pki.RoleCore, deployment.DefaultCoreName))
	proxyAsCore := pkitest.NewRecorder(t, identity(t, c, pki.RoleProxy, catest.Proxy))
	roots, err := pki.LoadTrustBundle(c.RootCert())
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, upstream string
		core, ca, more string
		rec            *pkitest.Recorder
		want           error
	}{
		{name: "core unreachable", upstream: "core", core: down, more: "startupTimeout: 1s", want: service.ErrNoAnswer},
		{name: "core of another deployment", upstream: "core", core: localhost(otherCore.URL), want: service.ErrWrongIdentity},
		{name: "a proxy's certificate in core's place", upstream: "core", core: proxyAsCore.URL, rec: proxyAsCore, want: service.ErrWrongIdentity},
		{name: "a core not in core.names", upstream: "core", more: "core: {url: " + coreURL + ", names: [core-2]}", want: service.ErrWrongIdentity},
		{name: "step-ca unreachable", upstream: "step-ca", ca: down, more: "startupTimeout: 1s", want: service.ErrNoAnswer},
		{name: "core's certificate in step-ca's place", upstream: "step-ca", ca: coreAsCA.URL, rec: coreAsCA, want: service.ErrWrongIdentity},
	} {
		t.Run(tc.name, func(t *testing.T) {
			top := tc.more
			if tc.core != "" {
				top += fmt.Sprintf("\ncore: {url: %q}", tc.core)
			}
			if tc.ca != "" {
				top += fmt.Sprintf("\nca: {url: %q}", tc.ca)
			}
			p, err := proxytest.Try(t, core, "127.0.0.1:0", top, local)
			if err == nil {
				// What finding 8 saw: the proxy serves, and enrolls.
				e := &env{core: core, url: p.URL, roots: roots}
				code, _, _ := e.enroll(t, req("rpi4", fmt.Sprintf("10000000000e%04x", len(tc.name)), newDevice(t)))
				t.Errorf("the proxy started (an enrollment got %d)", code)
			}
			t.Logf("refused: %v", err)
			var ue *service.UpstreamError
			if err != nil && (!errors.As(err, &ue) || ue.Upstream != tc.upstream || !errors.Is(err, tc.want)) {
				t.Errorf("start: %v; want %s: %v", err, tc.upstream, tc.want)
			}
			if tc.rec != nil && (tc.rec.Requests.Load() != 0 || tc.rec.Tokens.Load() != 0) {
				t.Errorf("the server in the wrong place received %d requests, %d of them with a token", tc.rec.Requests.Load(), tc.rec.Tokens.Load())
			}
		})
	}
}

// forwarder relays TCP connections to a target the test switches: core
// or step-ca going away, coming back, or something else answering in its
// place, at the address the proxy was configured with. Switching closes
// the connections it relays, so no pooled connection outlives a switch.
type forwarder struct {
	ln       net.Listener
	accepted atomic.Int64
	mu       sync.Mutex
	target   string // "": every connection is closed at once
	conns    map[net.Conn]bool
}

func newForwarder(t *testing.T) *forwarder {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &forwarder{ln: ln, conns: map[net.Conn]bool{}}
	t.Cleanup(func() {
		_ = ln.Close()
		f.to("")
	})
	go f.serve()
	return f
}

func (f *forwarder) url() string { return localhost("https://" + f.ln.Addr().String()) }

func (f *forwarder) to(target string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.target = target
	for c := range f.conns {
		_ = c.Close()
	}
	clear(f.conns)
}

func (f *forwarder) serve() {
	for {
		in, err := f.ln.Accept()
		if err != nil {
			return
		}
		f.accepted.Add(1)
		f.mu.Lock()
		target := f.target
		f.mu.Unlock()
		if target == "" {
			_ = in.Close()
			continue
		}
		out, err := net.Dial("tcp", target)
		if err != nil {
			_ = in.Close()
			continue
		}
		f.mu.Lock()
		if f.target != target { // switched while dialling
			f.mu.Unlock()
			_ = in.Close()
			_ = out.Close()
			continue
		}
		f.conns[in], f.conns[out] = true, true
		f.mu.Unlock()
		for _, pair := range [][2]net.Conn{{in, out}, {out, in}} {
			go func() {
				_, _ = io.Copy(pair[0], pair[1])
				_ = pair[0].Close()
				_ = pair[1].Close()
			}()
		}
	}
}

// readyz is the proxy's /readyz: its status and message.
func readyz(t *testing.T, e *env) (int, string) {
	t.Helper()
	code, body := get(t, e, enrollapi.RouteReadyz.Path)
	var ae coreapi.Error
	_ = json.Unmarshal([]byte(body), &ae)
	return code, ae.Message
}

// Readiness is true only while core and step-ca both answer as themselves:
// at start the proxy waits for them (one started a little after it comes
// up), then /readyz follows each going away, coming back and being
// replaced, and an enrollment while a recorder holds step-ca's place
// sends it nothing.
func TestReadinessFollowsUpstreams(t *testing.T) {
	core := coretest.Start(t, "")
	c := core.CA
	coreAt, caAt := newForwarder(t), newForwarder(t)
	coreAsCA := pkitest.NewRecorder(t, identity(t, c, pki.RoleCore, deployment.DefaultCoreName))
	proxyAsCore := pkitest.NewRecorder(t, identity(t, c, pki.RoleProxy, catest.Proxy))
	// Neither answers until the proxy has tried both.
	go func() {
		_ = testenv.WaitFor(time.Minute, func() error {
			if coreAt.accepted.Load() == 0 || caAt.accepted.Load() == 0 {
				return errors.New("not tried yet")
			}
			return nil
		})
		coreAt.to(hostPort(t, core.URL))
		caAt.to(hostPort(t, c.CAURL))
	}()
	p, err := proxytest.Try(t, core, "127.0.0.1:0", fmt.Sprintf("core: {url: %q}\nca: {url: %q}\nstartupTimeout: 1m", coreAt.url(), caAt.url()), local)
	if err != nil {
		t.Fatalf("a proxy started before core and step-ca: %v", err)
	}
	roots, err := pki.LoadTrustBundle(c.RootCert())
	if err != nil {
		t.Fatal(err)
	}
	e := &env{core: core, url: p.URL, roots: roots}
	expect := func(step string, code int, msg string) {
		t.Helper()
		if err := testenv.WaitFor(30*time.Second, func() error {
			if got, m := readyz(t, e); got != code || !strings.Contains(m, msg) {
				return fmt.Errorf("readyz %d %q; want %d %q", got, m, code, msg)
			}
			return nil
		}); err != nil {
			t.Fatalf("%s: %v", step, err)
		}
	}
	expect("both answer", 200, "")
	coreAt.to("")
	expect("core away", 503, "core "+service.ErrNoAnswer.Error())
	coreAt.to(proxyAsCore.Addr)
	expect("a proxy in core's place", 503, "core "+service.ErrWrongIdentity.Error())
	coreAt.to(hostPort(t, core.URL))
	expect("core back", 200, "")
	caAt.to("")
	expect("step-ca away", 503, "step-ca "+service.ErrNoAnswer.Error())
	caAt.to(coreAsCA.Addr)
	expect("core's certificate in step-ca's place", 503, "step-ca "+service.ErrWrongIdentity.Error())
	if code, _, ae := e.enroll(t, req("rpi4", "10000000000e0001", newDevice(t))); code != http.StatusBadGateway {
		t.Fatalf("an enrollment with a recorder in step-ca's place: %d %+v", code, ae)
	}
	if n := coreAsCA.Requests.Load(); n != 0 {
		t.Fatalf("the recorder in step-ca's place received %d requests (%d tokens)", n, coreAsCA.Tokens.Load())
	}
	caAt.to(hostPort(t, c.CAURL))
	expect("step-ca back", 200, "")
	if code, _, ae := e.enroll(t, req("rpi4", "10000000000e0002", newDevice(t))); code != http.StatusOK {
		t.Fatalf("an enrollment with both back: %d %+v", code, ae)
	}
}

// Issue 13, finding 8: the status page and /metrics answered any source.
// Now the factory networks only (vouching.networks), or status.networks if
// set; others get 403. /healthz and /readyz stay open.
func TestStatusAndMetricsOnlyForTheirNetworks(t *testing.T) {
	core := coretest.Start(t, "")
	roots, err := pki.LoadTrustBundle(core.RootCert())
	if err != nil {
		t.Fatal(err)
	}
	// This test's requests come from 127.0.0.1.
	outside := &env{url: proxytest.Start(t, core, "networks: [\"10.0.0.0/8\"]\n").URL, roots: roots}
	listed := &env{url: proxytest.StartWith(t, core, `status: {networks: ["127.0.0.1/32"]}`, "networks: [\"10.0.0.0/8\"]\n").URL, roots: roots}
	for _, tc := range []struct {
		e     *env
		path  string
		code  int
		shows string
	}{
		{outside, "/", 403, `"error":"refused_network"`},
		{outside, "/metrics", 403, `"error":"refused_network"`},
		{outside, "/healthz", 200, "ok"},
		{outside, "/readyz", 200, "ready"},
		{listed, "/", 200, "Factory enrollment"},
		{listed, "/metrics", 200, "prov_proxy_requests_total"},
	} {
		code, body := get(t, tc.e, tc.path)
		if code != tc.code || !strings.Contains(body, tc.shows) {
			t.Errorf("%s: %d %.300s", tc.path, code, body)
		}
	}
}

func get(t *testing.T, e *env, path string) (int, string) {
	t.Helper()
	hc := &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{DisableKeepAlives: true,
		TLSClientConfig: pki.ClientTLSConfig(nil, e.roots, pki.ClientOptions{ServerRoles: []pki.Role{pki.RoleProxy}})}}
	resp, err := hc.Get(e.url + path)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}
