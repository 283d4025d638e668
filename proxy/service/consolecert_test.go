package service_test

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/fleetprov/prov/core/coretest"
	"github.com/fleetprov/prov/internal/serve"
	"github.com/fleetprov/prov/internal/testenv"
	"github.com/fleetprov/prov/internal/testenv/browser"
	"github.com/fleetprov/prov/pki"
	"github.com/fleetprov/prov/pki/ca/catest"
	"github.com/fleetprov/prov/proxy/proxytest"
)

// Why the console has a certificate and a port of its own, in the browser a
// kiosk runs, with only the deployment's root trusted: Chromium refuses
// the enrollment listener's certificate, the proxy's identity
// (ERR_CERT_INVALID: its URI SAN under the intermediate's critical URI name
// constraint, a name type Chromium does not implement), and loads the
// console listener, whose certificate names the same hosts and no URI.
func TestConsoleListenerInBrowser(t *testing.T) {
	core := coretest.Start(t, "")
	p := proxytest.Start(t, core, local)
	if p.ConsoleURL == "" {
		t.Fatal("the test proxy has no console listener")
	}
	refused := browser.Open(t, core.RootCert())
	if got := refused.Refused(p.URL + "/"); !strings.Contains(got, "ERR_CERT_INVALID") {
		t.Errorf("Chromium on the enrollment listener (the proxy's identity): %q, want net::ERR_CERT_INVALID", got)
	}
	tab := browser.Open(t, core.RootCert())
	tab.Navigate(p.ConsoleURL + "/")
	tab.WaitUntil(`document.body.innerText.includes("console")`)
	tab.Screenshot("console-own-listener")
}

// The console listener serves the console's routes alone, with the
// console certificate (a client trusting the root and checking the host
// accepts it; it names no identity), and the health panel lists it.
func TestConsoleListenerServesTheConsoleOnly(t *testing.T) {
	core := coretest.Start(t, "")
	p := proxytest.Start(t, core, local)
	roots, err := pki.LoadTrustBundle(core.RootCert())
	if err != nil {
		t.Fatal(err)
	}
	hc := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots.Pool(), MinVersion: tls.VersionTLS13}}}
	get := func(path string) (int, string, *tls.ConnectionState) {
		t.Helper()
		resp, err := hc.Get(p.ConsoleURL + path)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		defer func() { _ = resp.Body.Close() }()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body), resp.TLS
	}
	code, _, cs := get("/")
	if code != http.StatusOK {
		t.Fatalf("GET / on the console listener: %d", code)
	}
	if leaf := cs.PeerCertificates[0]; len(leaf.URIs) != 0 || leaf.Subject.CommonName != "console/"+catest.Proxy {
		t.Errorf("the console listener's certificate: CN %q, URIs %v", leaf.Subject.CommonName, leaf.URIs)
	}
	for _, path := range []string{"/v1/enroll", "/metrics", "/readyz"} {
		if code, _, _ := get(path); code != http.StatusNotFound && code != http.StatusMethodNotAllowed {
			t.Errorf("GET %s on the console listener: %d, want it not served", path, code)
		}
	}
	if err := testenv.WaitFor(time.Minute, func() error {
		if _, body, _ := get("/console/state"); !strings.Contains(body, `"name":"console"`) {
			return errors.New("the health panel does not list the console certificate yet")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// A proxy refuses to start with a console certificate that names an
// identity (here its own identity's), or that does not chain to the root
// for the proxy's hosts: a configuration error naming console.tls.cert.
func TestConsoleCertificateChecked(t *testing.T) {
	core := coretest.Start(t, "")
	c := core.CA
	top := fmt.Sprintf("console: {listen: \"127.0.0.1:0\", tls: {cert: %q, key: %q}}",
		c.IdentityCert(pki.RoleProxy, catest.Proxy), c.IdentityKey(pki.RoleProxy, catest.Proxy))
	_, err := proxytest.Try(t, core, "127.0.0.1:0", top, local)
	if !errors.Is(err, serve.ErrBadConfig) || !strings.Contains(err.Error(), "console.tls.cert") || !strings.Contains(err.Error(), "names an identity") {
		t.Fatalf("a proxy with its identity as the console certificate: %v; want a config error naming console.tls.cert", err)
	}
}

// The console certificate is no identity: core refuses it as a client
// (401, where the proxy's identity gets as far as its role, 403), and the
// broker refuses it at the handshake.
func TestConsoleCertificateIsNoClient(t *testing.T) {
	core := coretest.Start(t, "")
	c := core.CA
	roots, err := pki.LoadTrustBundle(core.RootCert())
	if err != nil {
		t.Fatal(err)
	}
	con, err := pki.LoadKeyPair(c.ConsoleCert(catest.Proxy), c.ConsoleKey(catest.Proxy))
	if err != nil {
		t.Fatal(err)
	}
	ident, err := pki.LoadKeyPair(c.IdentityCert(pki.RoleProxy, catest.Proxy), c.IdentityKey(pki.RoleProxy, catest.Proxy))
	if err != nil {
		t.Fatal(err)
	}
	status := func(kp *pki.KeyPair) (int, error) {
		cfg := pki.ClientTLSConfig(kp, roots, pki.ClientOptions{ServerRoles: []pki.Role{pki.RoleCore}})
		hc := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: cfg}}
		resp, err := hc.Get(strings.Replace(core.URL, "127.0.0.1", "localhost", 1) + "/v1/devices")
		if err != nil {
			return 0, err
		}
		_ = resp.Body.Close()
		return resp.StatusCode, nil
	}
	if code, err := status(ident); err != nil || code != http.StatusForbidden {
		t.Fatalf("the proxy's identity at core's admin route: %d %v; want 403", code, err)
	}
	if code, err := status(con); err == nil && code != http.StatusUnauthorized {
		t.Errorf("the console certificate at core: %d; want 401 or a refused handshake", code)
	} else {
		t.Logf("core refuses the console certificate: %d %v", code, err)
	}
	if core.MQTTAddr == "" {
		return
	}
	conn, err := tls.Dial("tcp", core.MQTTAddr, pki.ClientTLSConfig(con, roots, pki.ClientOptions{ServerRoles: []pki.Role{pki.RoleCore}}))
	if err == nil {
		_ = conn.SetReadDeadline(time.Now().Add(30 * time.Second))
		_, err = conn.Read(make([]byte, 1))
		_ = conn.Close()
	}
	var ne net.Error
	if err == nil || (errors.As(err, &ne) && ne.Timeout()) {
		t.Errorf("the broker took the console certificate: %v", err)
	} else {
		t.Logf("the broker refuses the console certificate: %v", err)
	}
}
