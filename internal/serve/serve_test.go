package serve_test

import (
	"context"
	"crypto/x509"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fleetprov/prov/internal/serve"
	"github.com/fleetprov/prov/pki"
	"github.com/fleetprov/prov/pki/pkitest"
)

type testConfig struct {
	serve.Identity `yaml:",inline"`
	Name           string           `yaml:"name"`
	HTTP           serve.HTTPConfig `yaml:"http"`
	Log            serve.LogConfig  `yaml:"log"`
}

func (c *testConfig) Defaults() {
	c.HTTP.Default(serve.HTTPConfig{ReadHeaderTimeout: time.Second, ReadTimeout: time.Second, WriteTimeout: time.Second,
		IdleTimeout: time.Second, ShutdownTimeout: time.Second, MaxHeaderBytes: 4096, MaxConnections: 10})
	c.Log.Default()
}

func (c *testConfig) Validate() error {
	if err := c.Identity.Validate(); err != nil {
		return err
	}
	if err := c.HTTP.Validate(); err != nil {
		return err
	}
	return c.Log.Validate()
}

func TestConfigBlocks(t *testing.T) {
	var c testConfig
	if err := serve.ParseYAML([]byte("trustBundle: r.pem\ntls: {cert: c.pem, key: k.pem}\nhttp: {readTimeout: 3s}\n"), &c); err != nil {
		t.Fatal(err)
	}
	if c.TrustBundle != "r.pem" || c.TLS.Key != "k.pem" || c.HTTP.ReadTimeout != 3*time.Second || c.HTTP.WriteTimeout != time.Second || c.Log.Level != "info" {
		t.Errorf("parsed %+v", c)
	}
	for _, tc := range []struct{ yaml, key string }{
		{"tls: {cert: c.pem, key: k.pem}\n", "trustBundle"},
		{"trustBundle: r.pem\ntls: {cert: c.pem}\n", "tls.key"},
		{"trustBundle: r.pem\ntls: {cert: c.pem, key: k.pem}\nhttp: {idleTimeout: -1s}\n", "http.idleTimeout"},
		{"trustBundle: r.pem\ntls: {cert: c.pem, key: k.pem}\nhttp: {maxConnections: -5}\n", "http.maxConnections"},
		{"trustBundle: r.pem\ntls: {cert: c.pem, key: k.pem}\nhttp: {maxHeaderBytes: 10}\n", "http.maxHeaderBytes"},
		{"trustBundle: r.pem\ntls: {cert: c.pem, key: k.pem}\nlog: {level: loud}\n", "log.level"},
		{"trustBundle: r.pem\ntls: {cert: c.pem, key: k.pem}\nhttp: {readTimout: 3s}\n", "readTimout"},
	} {
		var c testConfig
		err := serve.ParseYAML([]byte(tc.yaml), &c)
		if !errors.Is(err, serve.ErrBadConfig) || !strings.Contains(err.Error(), tc.key) {
			t.Errorf("%q: %v, want an error naming %s", tc.yaml, err, tc.key)
		}
	}
	if err := serve.LoadYAML(filepath.Join(t.TempDir(), "missing.yaml"), &c); !errors.Is(err, serve.ErrBadConfig) {
		t.Errorf("missing file: %v", err)
	}
}

func writeRoot(t *testing.T, ca *pkitest.CA) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "root.pem")
	if err := os.WriteFile(p, ca.RootPEM, 0o644); err != nil { //nolint:gosec // public
		t.Fatal(err)
	}
	return p
}

func TestIdentityLoad(t *testing.T) {
	ca := pkitest.NewCA(t, "fleet.test")
	root := writeRoot(t, ca)
	coreCert, coreKey := ca.KeyPair(t, pkitest.LeafSpec{CN: "core/main", URIs: []string{"spiffe://fleet.test/core/main"}, DNS: []string{"localhost"},
		EKU: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}})
	id := serve.Identity{TrustBundle: root, TLS: serve.KeyPairFiles{Cert: coreCert, Key: coreKey}}
	self, err := id.LoadSelf(pki.RoleCore)
	if err != nil || self.ID.String() != "spiffe://fleet.test/core/main" || string(self.RootPEM) != string(ca.RootPEM) || self.KeyPair == nil {
		t.Fatalf("core's identity: %+v %v", self, err)
	}
	other := pkitest.NewCA(t, "fleet.test")
	for _, tc := range []struct {
		name string
		id   serve.Identity
		role pki.Role
		key  string
	}{
		{"another role", id, pki.RoleProxy, "tls:"},
		{"another root", serve.Identity{TrustBundle: writeRoot(t, other), TLS: id.TLS}, pki.RoleCore, "tls:"},
		{"no root file", serve.Identity{TrustBundle: root + ".missing", TLS: id.TLS}, pki.RoleCore, "trustBundle:"},
		{"no key file", serve.Identity{TrustBundle: root, TLS: serve.KeyPairFiles{Cert: coreCert, Key: coreKey + ".missing"}}, pki.RoleCore, "tls:"},
	} {
		if _, err := tc.id.LoadSelf(tc.role); err == nil || !strings.HasPrefix(err.Error(), tc.key) {
			t.Errorf("%s: %v, want an error starting %q", tc.name, err, tc.key)
		}
	}
}

// HTTPS serves until its context ends, lets a request in flight finish,
// and returns nil; a listener that fails is an error.
func TestHTTPS(t *testing.T) {
	ca := pkitest.NewCA(t, "fleet.test")
	cert, key := ca.KeyPair(t, pkitest.LeafSpec{CN: "core/main", URIs: []string{"spiffe://fleet.test/core/main"}, DNS: []string{"localhost"},
		IPs: []string{"127.0.0.1"}, EKU: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
	self, err := (&serve.Identity{TrustBundle: writeRoot(t, ca), TLS: serve.KeyPairFiles{Cert: cert, Key: key}}).LoadSelf(pki.RoleCore)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	inFlight, release := make(chan struct{}), make(chan struct{})
	h := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		close(inFlight)
		<-release
		_, _ = io.WriteString(w, "done")
	})
	cfg := serve.HTTPConfig{ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 5 * time.Second, WriteTimeout: 5 * time.Second,
		IdleTimeout: 5 * time.Second, ShutdownTimeout: 10 * time.Second, MaxHeaderBytes: 4096, MaxConnections: 4}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() {
		served <- serve.HTTPS(ctx, ln, h, pki.ServerTLSConfig(self.KeyPair, self.Roots, pki.ServerOptions{ClientCerts: pki.NoClientCert}), cfg,
			slog.New(slog.DiscardHandler))
	}()
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: pki.ClientTLSConfig(nil, self.Roots, pki.ClientOptions{ServerRoles: []pki.Role{pki.RoleCore}})}}
	got := make(chan string, 1)
	go func() {
		resp, err := client.Get("https://" + ln.Addr().String() + "/")
		if err != nil {
			got <- err.Error()
			return
		}
		defer func() { _ = resp.Body.Close() }()
		b, _ := io.ReadAll(resp.Body)
		got <- string(b)
	}()
	<-inFlight
	cancel()
	close(release)
	if body := <-got; body != "done" {
		t.Errorf("the request in flight got %q", body)
	}
	if err := <-served; err != nil {
		t.Errorf("HTTPS after its context ended: %v", err)
	}
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	_ = closed.Close()
	if err := serve.HTTPS(context.Background(), closed, h, nil, cfg, slog.New(slog.DiscardHandler)); err == nil {
		t.Error("HTTPS on a closed listener returned nil")
	}
}

func TestCompose(t *testing.T) {
	var did []string
	step := func(name string, err error) func() error {
		return func() error { did = append(did, name); return err }
	}
	run := func(context.Context) error { did = append(did, "run"); return nil }
	closeErr := errors.New("close failed")
	for _, tc := range []struct {
		name     string
		build    []func() error
		closeErr error
		want     []string
		err      error
	}{
		{"all steps, run, close", []func() error{step("a", nil), step("b", nil)}, nil, []string{"a", "b", "run", "close"}, nil},
		{"a failing step stops the build; close still runs", []func() error{step("a", errBoom), step("b", nil)}, closeErr, []string{"a", "close"}, errBoom},
		{"a close error after a clean run", []func() error{step("a", nil)}, closeErr, []string{"a", "run", "close"}, closeErr},
	} {
		did = nil
		err := serve.Compose(context.Background(), tc.build, run, func() error { did = append(did, "close"); return tc.closeErr })
		if !errors.Is(err, tc.err) || (tc.err == nil && err != nil) || strings.Join(did, ",") != strings.Join(tc.want, ",") {
			t.Errorf("%s: did %v, %v", tc.name, did, err)
		}
	}
}

var errBoom = errors.New("boom")

// The renewal block: on by default only where step-ca's URL is known, the
// device's two thirds, a warning threshold a renewal on time never reaches,
// errors naming the key.
func TestRenewalConfig(t *testing.T) {
	var on, off serve.RenewalConfig
	on.Default(true)
	off.Default(false)
	if !on.On() || off.On() || on.At != 2.0/3 || on.WarnLeft != 1.0/6 || on.Backoff.Min != 30*time.Second || on.Backoff.Max != 30*time.Minute {
		t.Fatalf("defaults: %+v %+v", on, off)
	}
	if err := on.Validate(true); err != nil {
		t.Fatal(err)
	}
	if err := off.Validate(false); err != nil {
		t.Fatal(err)
	}
	yes := true
	for _, tc := range []struct {
		name string
		c    serve.RenewalConfig
		ca   bool
		key  string
	}{
		{"on without a CA", serve.RenewalConfig{Enabled: &yes}, false, "renewal.enabled"},
		{"at 1", serve.RenewalConfig{At: 1}, true, "renewal.at"},
		{"a warning before renewal is due", serve.RenewalConfig{At: 0.8, WarnLeft: 0.3}, true, "renewal.warnLeft"},
		{"max below min", serve.RenewalConfig{Backoff: serve.Backoff{Min: time.Minute, Max: time.Second}}, true, "renewal.backoff"},
	} {
		tc.c.Default(tc.ca)
		if err := tc.c.Validate(tc.ca); !errors.Is(err, serve.ErrBadConfig) || !strings.Contains(err.Error(), tc.key) {
			t.Errorf("%s: %v, want an error naming %s", tc.name, err, tc.key)
		}
	}
}
