package browser_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fleetprov/prov/internal/testenv/browser"
)

func TestMain(m *testing.M) { os.Exit(browser.Main(m)) }

// recorder is a test whose failures the harness's own test reads: what a
// tab reports when its test ends.
type recorder struct {
	testing.TB
	mu     sync.Mutex
	errors []string
}

func (r *recorder) Errorf(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.errors = append(r.errors, fmt.Sprintf(format, args...))
}

// server serves pages over TLS and returns its URL and its root (its
// self-signed certificate) as a PEM file.
func server(t *testing.T, pages map[string]string) (string, string) {
	t.Helper()
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		page, ok := pages[r.URL.Path]
		if !ok {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		_, _ = w.Write([]byte(page))
	}))
	t.Cleanup(srv.Close)
	root := filepath.Join(t.TempDir(), "root.pem")
	if err := os.WriteFile(root, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	return srv.URL, root
}

const icon = `<link rel="icon" href="data:,">` // no /favicon.ico request

// Each page's fault fails the test that loaded it; a clean page fails none.
func TestTabReportsWhatThePageDidWrong(t *testing.T) {
	pages := map[string]string{
		"/clean":    icon + `<p id="p" data-x="1">hello</p>`,
		"/error":    icon + `<script>console.error("boom")</script>`,
		"/throw":    icon + `<script>throw new Error("thrown")</script>`,
		"/external": icon + `<img src="https://127.0.0.2:9/x.png">`,
		"/dialog":   icon + `<script>alert("hi")</script>`,
		"/missing":  icon + `<img src="/nothing.png">`,
	}
	url, root := server(t, pages)
	for _, tc := range []struct{ path, want string }{
		{"/clean", ""},
		{"/error", "the page logged an error: boom"},
		{"/throw", "uncaught exception"},
		{"/external", "outside " + url},
		{"/dialog", "alert dialog"},
		{"/missing", "answered 404"},
	} {
		rec := &recorder{}
		t.Run(strings.TrimPrefix(tc.path, "/"), func(t *testing.T) {
			rec.TB = t
			tab := browser.Open(rec, root)
			tab.Navigate(url + tc.path)
			// The page's scripts ran before its load event, which
			// Navigate waits for; a round trip more lets the events reach
			// the tab.
			tab.Eval("1")
		})
		got := strings.Join(rec.errors, "\n")
		switch {
		case tc.want == "" && got != "":
			t.Errorf("%s: a clean page failed its test: %s", tc.path, got)
		case tc.want != "" && !strings.Contains(got, tc.want):
			t.Errorf("%s: the test failed with %q, want %q", tc.path, got, tc.want)
		}
	}
}

// Reading and waiting: text and attributes of elements, and a condition
// the page comes to after it loaded.
func TestTabReadsAndWaits(t *testing.T) {
	url, root := server(t, map[string]string{"/": icon + `<p id="p" data-x="1">hello <b>world</b></p>
<script>setTimeout(() => { document.body.dataset.ready = "yes" }, 100)</script>`})
	tab := browser.Open(t, root)
	tab.Navigate(url + "/")
	if got := tab.Text("#p"); got != "hello world" {
		t.Errorf("text %q", got)
	}
	if v, ok := tab.Attr("#p", "data-x"); !ok || v != "1" {
		t.Errorf("attribute data-x: %q %v", v, ok)
	}
	if _, ok := tab.Attr("#p", "data-y"); ok {
		t.Error("an absent attribute was found")
	}
	tab.WaitUntil(`document.body.dataset.ready === "yes"`)
	if n := tab.Count("b"); n != 1 {
		t.Errorf("%d b elements", n)
	}
	if _, err := os.Stat(tab.Screenshot("page")); err != nil {
		t.Error(err)
	}
}

// The browser ignores no certificate error: a server whose certificate
// no trusted root vouches for is refused, as a kiosk would refuse it,
// while the trusted one loads in the same tab's browser.
func TestUntrustedServerIsRefused(t *testing.T) {
	url, root := server(t, map[string]string{"/": icon + `<p>trusted</p>`})
	other := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("untrusted")) }))
	other.TLS = &tls.Config{Certificates: []tls.Certificate{selfSigned(t)}}
	other.StartTLS()
	t.Cleanup(other.Close)
	tab := browser.Open(t, root)
	if got := tab.Refused(other.URL + "/"); !strings.Contains(got, "ERR_CERT_AUTHORITY_INVALID") {
		t.Errorf("an untrusted server: %q, want net::ERR_CERT_AUTHORITY_INVALID", got)
	}
	tab.Navigate(url + "/")
	if got := tab.Text("p"); got != "trusted" {
		t.Errorf("the trusted server's page says %q", got)
	}
}

// selfSigned is a certificate for 127.0.0.1 that nothing trusts.
func selfSigned(t *testing.T) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "untrusted"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}
