// Package coretest runs a real prov-core in tests: a deployment PKI and its
// step-ca (catest), a configuration written as an operator would, the
// service on loopback with its embedded broker, and mTLS clients for every
// role, device certificates included, issued through step-ca.
package coretest

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fleetprov/prov/core/config"
	"github.com/fleetprov/prov/core/contract/coreapi"
	"github.com/fleetprov/prov/core/service"
	"github.com/fleetprov/prov/core/store"
	"github.com/fleetprov/prov/pki"
	"github.com/fleetprov/prov/pki/ca/catest"
	"github.com/fleetprov/prov/pki/deployment"
	"github.com/fleetprov/prov/pki/token"
)

// Config writes a prov-core configuration for the PKI d into dir and
// returns its path. extra is YAML whose top-level keys replace the base's.
// The API and the embedded broker listen on 127.0.0.1:0: each binds a free
// port, and Run reports both.
func Config(t testing.TB, d *deployment.Deployment, dir, extra string) string {
	t.Helper()
	secret := filepath.Join(dir, "machine-id.secret")
	if err := os.WriteFile(secret, []byte(strings.Repeat("s3cr3t-", 8)), 0o600); err != nil {
		t.Fatal(err)
	}
	core := deployment.DefaultCoreName
	cfg := fmt.Sprintf(`listen: "127.0.0.1:0"
trustBundle: %q
tls: {cert: %q, key: %q}
signer: {cert: %q, key: %q}
store: {path: %q}
policy:
  machineIdSecretFile: %q
  groups:
    default:
      hostname: "{{.Board}}-{{.Serial}}"
      mqttClientId: "{{.Serial}}"
      mqttGroupId: "fleet"
      data:
        /etc/prov/data/broker-url: "mqtts://broker.fleet.test:8883\n"
    line-b:
      hostname: "b-{{.Serial}}"
      mqttClientId: "b-{{.Serial}}"
      mqttGroupId: "line-b"
mqtt:
  embedded: {listen: "127.0.0.1:0"}
log: {level: debug}
`, d.RootCert(), d.IdentityCert(pki.RoleCore, core), d.IdentityKey(pki.RoleCore, core),
		d.IdentityCert(pki.RoleSigner, deployment.DefaultSignerName), d.IdentityKey(pki.RoleSigner, deployment.DefaultSignerName),
		filepath.Join(dir, "registry.db"), secret)
	path := filepath.Join(dir, "core.yaml")
	if err := os.WriteFile(path, []byte(MergeYAML(cfg, extra)), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// Core is a running prov-core.
type Core struct {
	*catest.CA
	URL        string // https://127.0.0.1:port
	MQTTAddr   string // the embedded broker's bound host:port, or the external broker's URL
	ConfigPath string
	Dir        string
	stop       func()
}

// Start runs core for the shared test CA until the test ends.
func Start(t testing.TB, extraYAML string, opts ...service.Option) *Core {
	t.Helper()
	c := catest.Shared(t)
	dir := t.TempDir()
	return Run(t, c, Config(t, c.Deployment, dir, extraYAML), dir, opts...)
}

// Run runs core from a configuration file until the test ends (or Stop).
func Run(t testing.TB, c *catest.CA, configPath, dir string, opts ...service.Option) *Core {
	t.Helper()
	return RunAt(t, c, configPath, dir, "127.0.0.1:0", opts...)
}

// RunAt is Run with the API listening on addr.
func RunAt(t testing.TB, c *catest.CA, configPath, dir, addr string, opts ...service.Option) *Core {
	t.Helper()
	cfg, err := config.Load(configPath)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	started := make(chan [2]string, 1)
	done := make(chan error, 1)
	log := slog.New(slog.NewJSONHandler(&testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	go func() {
		done <- service.Run(ctx, cfg, log, append(opts, service.WithListener(ln),
			service.WithStarted(func(api, mqtt string) { started <- [2]string{api, mqtt} }))...)
	}()
	var addrs [2]string
	select {
	case addrs = <-started:
	case err := <-done:
		cancel()
		t.Fatalf("prov-core did not start: %v", err)
	case <-time.After(30 * time.Second):
		cancel()
		t.Fatal("prov-core did not start in 30s")
	}
	core := &Core{CA: c, URL: "https://" + addrs[0], MQTTAddr: addrs[1], ConfigPath: configPath, Dir: dir}
	stopped := false
	core.stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		if err := <-done; err != nil {
			t.Errorf("prov-core stopped with: %v", err)
		}
	}
	t.Cleanup(core.stop)
	// Nothing to wait for: the embedded broker bound its port before core
	// reported it (mqtt.NewBroker binds), so a client that connects before
	// it serves waits in the listen queue.
	return core
}

// Stop stops core (idempotent).
func (c *Core) Stop() { c.stop() }

// testWriter sends logs to t.Log, shown only when a test fails.
type testWriter struct{ t testing.TB }

func (w *testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// TLS returns a client TLS configuration with cert (nil: none) that trusts
// the deployment and wants core at the other end.
func (c *Core) TLS(t testing.TB, cert *tls.Certificate) *tls.Config {
	t.Helper()
	bundle, err := pki.LoadTrustBundle(c.RootCert())
	if err != nil {
		t.Fatal(err)
	}
	cfg := pki.ClientTLSConfig(nil, bundle, pki.ClientOptions{ServerName: "localhost", ServerRoles: []pki.Role{pki.RoleCore}})
	if cert != nil {
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return cert, nil }
	}
	return cfg
}

// HTTP returns an HTTP client presenting cert.
func (c *Core) HTTP(t testing.TB, cert *tls.Certificate) *http.Client {
	t.Helper()
	return &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: c.TLS(t, cert), ForceAttemptHTTP2: true}}
}

// Client returns an API client presenting cert.
func (c *Core) Client(t testing.TB, cert *tls.Certificate) *coreapi.Client {
	t.Helper()
	cl, err := coreapi.NewClient(c.URL, c.HTTP(t, cert))
	if err != nil {
		t.Fatal(err)
	}
	return cl
}

// ServiceCert loads a service identity that prov-pki init issued (admin,
// proxy, core).
func (c *Core) ServiceCert(t testing.TB, role pki.Role, name string) *tls.Certificate {
	t.Helper()
	kp, err := pki.LoadKeyPair(c.IdentityCert(role, name), c.IdentityKey(role, name))
	if err != nil {
		t.Fatal(err)
	}
	return kp.Certificate()
}

// Admin is the first admin's certificate.
func (c *Core) Admin(t testing.TB) *tls.Certificate {
	return c.ServiceCert(t, pki.RoleAdmin, deployment.DefaultAdminName)
}

// Proxy is the test proxy's certificate.
func (c *Core) Proxy(t testing.TB) *tls.Certificate {
	return c.ServiceCert(t, pki.RoleProxy, catest.Proxy)
}

// DeviceCert issues a device certificate for serial through step-ca, as
// the proxy does at enrollment.
func DeviceCert(t testing.TB, c *catest.CA, serial string, lifetime time.Duration) *tls.Certificate {
	t.Helper()
	key, csr := catest.NewCSR(t)
	prov, err := proxyProvisioner(c)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := prov.SignToken(token.SignRequest{Audience: c.Client.SignAudience(), Subject: serial,
		SANs: []string{"spiffe://" + c.TrustDomain + "/device/" + serial}, CSR: csr}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	chain, err := c.Client.SignFor(context.Background(), csr, tok, lifetime)
	if err != nil {
		t.Fatalf("device certificate for %s: %v", serial, err)
	}
	cert := &tls.Certificate{PrivateKey: key, Leaf: chain[0]}
	for _, ch := range chain {
		cert.Certificate = append(cert.Certificate, ch.Raw)
	}
	return cert
}

// provisioners are the proxy provisioners DeviceCert has decrypted, by the
// key file's path and the bytes of it and of its password file: decrypting
// is a 600,000-round key derivation (over a second under the race
// detector) and a test issues many device certificates from one PKI, as a
// proxy does from the one key it loaded at its start. The provisioner is
// immutable once loaded, so tests may share it.
var provisioners struct {
	sync.Mutex
	loaded map[string]*token.Provisioner
}

// proxyProvisioner is the PKI's proxy provisioner, decrypted once for
// the same key file, key and password.
func proxyProvisioner(c *catest.CA) (*token.Provisioner, error) {
	keyFile := c.ProxyProvisionerKey(catest.Proxy)
	jwe, err := os.ReadFile(keyFile)
	if err != nil {
		return nil, fmt.Errorf("proxy provisioner: %w", err)
	}
	pw, err := os.ReadFile(c.ProxyProvisionerPassword(catest.Proxy))
	if err != nil {
		return nil, fmt.Errorf("proxy provisioner: %w", err)
	}
	id := keyFile + "\x00" + string(jwe) + "\x00" + string(pw)
	provisioners.Lock()
	defer provisioners.Unlock()
	if p, ok := provisioners.loaded[id]; ok {
		return p, nil
	}
	p, err := c.ProxyProvisioner(catest.Proxy)
	if err != nil {
		return nil, err
	}
	if provisioners.loaded == nil {
		provisioners.loaded = map[string]*token.Provisioner{}
	}
	provisioners.loaded[id] = p
	return p, nil
}

// Enrolled issues a device certificate for serial through step-ca and
// records it at core through the proxy's API, as the proxy does at
// enrollment: core accepts a device only with a key it recorded.
func (c *Core) Enrolled(t testing.TB, serial string, lifetime time.Duration) *tls.Certificate {
	t.Helper()
	cert := DeviceCert(t, c.CA, serial, lifetime)
	c.RecordIssued(t, serial, cert.Leaf)
	return cert
}

// RecordIssued records leaf at core as issued for serial, through the
// proxy's API.
func (c *Core) RecordIssued(t testing.TB, serial string, leaf *x509.Certificate) {
	t.Helper()
	key, err := coreapi.KeySHA256(leaf.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Client(t, c.Proxy(t)).RecordIssued(context.Background(), serial, coreapi.IssuedCertificate{
		Serial: leaf.SerialNumber.String(), KeySHA256: key, NotBefore: leaf.NotBefore, NotAfter: leaf.NotAfter}); err != nil {
		t.Fatalf("record %s's certificate at core: %v", serial, err)
	}
}

// Register registers a hardware ID through the proxy's API and returns the
// device.
func (c *Core) Register(t testing.TB, board, hwid string) *coreapi.Device {
	t.Helper()
	d, _, err := c.Client(t, c.Proxy(t)).Register(context.Background(), coreapi.RegisterRequest{Board: board, HardwareID: hwid})
	if err != nil {
		t.Fatalf("register %s %s: %v", board, hwid, err)
	}
	return d
}

// Bundle fetches a device's signed bundle through the proxy's API and
// returns it with its ETag.
func (c *Core) Bundle(t testing.TB, serial string) ([]byte, string) {
	t.Helper()
	body, etag, err := c.Client(t, c.Proxy(t)).Bundle(context.Background(), serial, "")
	if err != nil {
		t.Fatalf("bundle of %s: %v", serial, err)
	}
	defer func() { _ = body.Close() }()
	b, err := io.ReadAll(body)
	if err != nil {
		t.Fatalf("bundle of %s: %v", serial, err)
	}
	return b, etag
}

// RPi4 makes a distinct rpi4 hardware ID from n.
func RPi4(n int) string { return "10000000" + fmt.Sprintf("%08x", n) }

// OpenStore opens the registry of a stopped core.
func (c *Core) OpenStore(t testing.TB) *store.Bolt {
	t.Helper()
	s, err := store.Open(filepath.Join(c.Dir, "registry.db"), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// MergeYAML replaces base's top-level YAML sections with extra's and adds
// the ones base lacks.
func MergeYAML(base, extra string) string {
	sections := func(y string) (order []string, m map[string]string) {
		m = map[string]string{}
		key := ""
		for _, line := range strings.SplitAfter(y, "\n") {
			if line != "" && line[0] != ' ' && line[0] != '\n' && strings.Contains(line, ":") {
				key = line[:strings.Index(line, ":")]
				order = append(order, key)
			}
			m[key] += line
		}
		return order, m
	}
	order, b := sections(base)
	extraOrder, e := sections(extra)
	var out strings.Builder
	for _, k := range order {
		if v, ok := e[k]; ok {
			out.WriteString(v)
			delete(e, k)
		} else {
			out.WriteString(b[k])
		}
	}
	for _, k := range extraOrder {
		out.WriteString(e[k])
	}
	return out.String()
}
