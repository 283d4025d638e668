// Package catest gives tests a complete deployment PKI made by
// deployment.Init in a temporary directory, and its step-ca running in the
// test process (or the step-ca binary) on a loopback port it bound itself.
//
// A test PKI's ca.json asks for port 0, so the CA takes whatever port is
// free when it binds, and no other process can take it first. step-ca does
// not say which port it got, so Run, RunBinary and WaitHealthy find it in
// /proc (testenv.ListeningTCP), make sure it is this deployment's CA (its
// TLS certificate chains to this PKI's root and, unlike every service
// identity, names no identity), and point CAURL at it, in memory and in
// pki.json. Tokens stay valid: step-ca's audience check ignores ports, and
// its TLS certificate names hosts, not ports.
//
// Making a PKI costs about 0.7 s (several 600,000-round key derivations),
// seven times that under the race detector, so tests that only read from the
// CA share one per test binary (Shared); tests that change what others could
// see make their own (Start).
package catest

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/fleetprov/prov/internal/testenv"
	"github.com/fleetprov/prov/pki"
	"github.com/fleetprov/prov/pki/ca"
	"github.com/fleetprov/prov/pki/deployment"
	"github.com/fleetprov/prov/pki/stepca"
)

// Password is the deployment password of test PKIs.
var Password = []byte("test-deployment-password")

// TrustDomain is the trust domain of test PKIs.
const TrustDomain = "fleet.test"

// Proxy is the one proxy of a test PKI.
const Proxy = "factory1"

// CA is a running test CA.
type CA struct {
	*deployment.Deployment
	Client *stepca.Client
	stop   func() error // set by Run: stops it once
}

// NewPKI creates a PKI in a temporary directory. The options, if any, are
// applied to the defaults before Init. The CA address is 127.0.0.1:0 unless
// an option changes it; with port 0 (on any host) the CA binds a free port
// when it runs, and until then CAURL names port 0.
func NewPKI(t testing.TB, opts ...func(*deployment.InitOptions)) *deployment.Deployment {
	t.Helper()
	d, err := newPKI(filepath.Join(t.TempDir(), "pki"), opts...)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// initPort stands in for port 0 during Init, which rightly refuses port 0
// from an operator (a CA URL needs a real port); newPKI then writes port 0
// into ca.json and pki.json.
const initPort = "1"

func newPKI(dir string, opts ...func(*deployment.InitOptions)) (*deployment.Deployment, error) {
	o := deployment.InitOptions{
		Dir:         dir,
		Password:    Password,
		TrustDomain: TrustDomain,
		CAAddress:   "127.0.0.1:0",
		CAHosts:     []string{"localhost", "127.0.0.1"},
		Proxies:     []deployment.ProxySpec{{Name: Proxy}},
	}
	for _, f := range opts {
		f(&o)
	}
	host, port, err := net.SplitHostPort(o.CAAddress)
	if err != nil {
		return nil, fmt.Errorf("test PKI: CA address %q: %w", o.CAAddress, err)
	}
	if port == "0" {
		o.CAAddress = net.JoinHostPort(host, initPort)
	}
	res, err := deployment.Init(context.Background(), o)
	if err != nil {
		return nil, fmt.Errorf("init test PKI: %w", err)
	}
	d := res.Deployment
	if port == "0" {
		if err := listenOnPort0(d, host); err != nil {
			return nil, err
		}
		if err := setCAPort(d, 0); err != nil {
			return nil, err
		}
	}
	return d, nil
}

// listenOnPort0 makes step-ca's configuration listen on host, port 0. Only
// the address changes (the keys' order in the file does too).
func listenOnPort0(d *deployment.Deployment, host string) error {
	raw, err := os.ReadFile(d.CAConfig())
	if err != nil {
		return fmt.Errorf("test PKI: %w", err)
	}
	var cfg map[string]json.RawMessage
	if err := json.Unmarshal(raw, &cfg); err != nil {
		return fmt.Errorf("test PKI: %s: %w", d.CAConfig(), err)
	}
	if cfg["address"], err = json.Marshal(net.JoinHostPort(host, "0")); err != nil {
		return fmt.Errorf("test PKI: %w", err)
	}
	out, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return fmt.Errorf("test PKI: %s: %w", d.CAConfig(), err)
	}
	if err := os.WriteFile(d.CAConfig(), append(out, '\n'), 0o600); err != nil {
		return fmt.Errorf("test PKI: %w", err)
	}
	return nil
}

// setCAPort points d's CA URL at port, in memory and in pki.json (which
// prov-pki issue and revoke read).
func setCAPort(d *deployment.Deployment, port uint16) error {
	u, err := url.Parse(d.CAURL)
	if err != nil {
		return fmt.Errorf("test PKI: CA URL: %w", err)
	}
	u.Host = net.JoinHostPort(u.Hostname(), strconv.Itoa(int(port)))
	d.CAURL = u.String()
	out, err := json.MarshalIndent(&d.Manifest, "", "  ")
	if err != nil {
		return fmt.Errorf("test PKI: manifest: %w", err)
	}
	if err := os.WriteFile(d.ManifestFile(), append(out, '\n'), 0o644); err != nil { //nolint:gosec // public, as init writes it
		return fmt.Errorf("test PKI: %w", err)
	}
	return nil
}

// Start creates a PKI and runs its step-ca until the test ends.
func Start(t testing.TB, opts ...func(*deployment.InitOptions)) *CA {
	t.Helper()
	return Run(t, NewPKI(t, opts...))
}

// Run runs step-ca for an existing PKI until the test ends.
func Run(t testing.TB, d *deployment.Deployment) *CA {
	t.Helper()
	c, stop, err := run(d)
	if err != nil {
		t.Fatal(err)
	}
	c.stop = sync.OnceValue(stop)
	t.Cleanup(func() {
		if err := c.stop(); err != nil {
			t.Errorf("step-ca stopped with: %v", err)
		}
	})
	return c
}

// Restart stops a CA that Run started and runs it again on the same PKI,
// as an operator does after changing its files (it reads its intermediate
// at start). With port 0 it binds a new port; the CA URL follows.
func (c *CA) Restart(t testing.TB) *CA {
	t.Helper()
	if c.stop == nil {
		t.Fatal("catest: Restart of a CA that Run did not start")
	}
	if err := c.stop(); err != nil {
		t.Fatalf("step-ca stopped with: %v", err)
	}
	return Run(t, c.Deployment)
}

func run(d *deployment.Deployment) (*CA, func() error, error) {
	srv, err := ca.NewServer(d.CAConfig(), Password, ca.WithoutRequestLog())
	if err != nil {
		return nil, nil, fmt.Errorf("step-ca: %w", err)
	}
	// In this process the CA's listener is one among the test's own: it is
	// one that was not there before.
	self := os.Getpid()
	before, err := testenv.ListeningTCP(self)
	if err != nil {
		return nil, nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	stop := func() error {
		cancel()
		return <-done
	}
	client, err := waitServing(d, self, before, done, 15*time.Second)
	if errors.Is(err, errExited) {
		return nil, nil, err
	}
	if err != nil {
		_ = stop()
		return nil, nil, err
	}
	return &CA{Deployment: d, Client: client}, stop, nil
}

var errExited = errors.New("the CA exited")

// WaitHealthy waits until process pid serves d's CA, points d's CA URL at
// the port it bound (see the package comment) and returns a client once
// the CA answers /health. It gives up when exited delivers (the process
// ended) or after timeout.
func WaitHealthy(d *deployment.Deployment, pid int, exited <-chan error, timeout time.Duration) (*stepca.Client, error) {
	return waitServing(d, pid, nil, exited, timeout)
}

// waitServing is WaitHealthy for a process whose listeners in known are
// not the CA's.
func waitServing(d *deployment.Deployment, pid int, known []netip.AddrPort, exited <-chan error, timeout time.Duration) (*stepca.Client, error) {
	roots, err := rootPool(d)
	if err != nil {
		return nil, err
	}
	u, err := url.Parse(d.CAURL)
	if err != nil {
		return nil, fmt.Errorf("CA URL: %w", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	bundle, err := pki.LoadTrustBundle(d.RootCert())
	if err != nil {
		return nil, err
	}
	var client *stepca.Client
	err = testenv.WaitFor(timeout, func() error {
		select {
		case xerr := <-exited:
			return testenv.Final(fmt.Errorf("%w at start: %w", errExited, xerr))
		default:
		}
		if client == nil {
			port, err := findCA(pid, known, u.Hostname(), roots)
			if err != nil {
				return err
			}
			if err := setCAPort(d, port); err != nil {
				return testenv.Final(err)
			}
			if client, err = stepca.New(d.CAURL, bundle); err != nil {
				return testenv.Final(err)
			}
		}
		return client.Health(ctx)
	})
	if err != nil {
		return nil, fmt.Errorf("CA not serving: %w", err)
	}
	return client, nil
}

// findCA returns the port on which process pid serves the CA whose TLS
// certificate chains to roots and names host: of the process's listeners
// not in known, the one whose certificate is no service identity. Every
// identity this PKI issues names one (core, proxies, admins, signers), so
// that certificate is step-ca's own, and only one step-ca can run on a
// PKI's files at a time (it locks its database).
func findCA(pid int, known []netip.AddrPort, host string, roots *x509.CertPool) (uint16, error) {
	addrs, err := testenv.ListeningTCP(pid)
	if err != nil {
		return 0, err
	}
	var errs []error
	for _, a := range addrs {
		if slices.Contains(known, a) {
			continue
		}
		dial := a
		if a.Addr().IsUnspecified() { // 0.0.0.0 or ::
			dial = netip.AddrPortFrom(netip.IPv6Loopback(), a.Port())
			if a.Addr().Is4() {
				dial = netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), a.Port())
			}
		}
		err := isCA(dial, host, roots)
		if err == nil {
			return a.Port(), nil
		}
		errs = append(errs, fmt.Errorf("%s: %w", a, err))
	}
	if len(errs) == 0 {
		return 0, fmt.Errorf("process %d listens on no new TCP port yet", pid)
	}
	return 0, fmt.Errorf("process %d does not serve the CA yet: %w", pid, errors.Join(errs...))
}

// isCA checks that the TLS server at addr is a CA of roots named host, not
// a service of the deployment.
func isCA(addr netip.AddrPort, host string, roots *x509.CertPool) error {
	dialer := &net.Dialer{Timeout: 2 * time.Second}
	conn, err := tls.DialWithDialer(dialer, "tcp", addr.String(), &tls.Config{RootCAs: roots, ServerName: host, MinVersion: tls.VersionTLS12})
	if err != nil {
		return err
	}
	defer func() { _ = conn.Close() }()
	id, err := pki.IdentityOf(conn.ConnectionState().PeerCertificates[0])
	switch {
	case errors.Is(err, pki.ErrNoIdentity):
		return nil
	case err != nil:
		return fmt.Errorf("not step-ca's certificate: %w", err)
	}
	return fmt.Errorf("%s of the deployment, not its CA", id)
}

func rootPool(d *deployment.Deployment) (*x509.CertPool, error) {
	pem, err := os.ReadFile(d.RootCert())
	if err != nil {
		return nil, fmt.Errorf("test PKI root: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("test PKI root %s: no certificate", d.RootCert())
	}
	return pool, nil
}

var shared struct {
	once sync.Once
	ca   *CA
	dir  string
	stop func() error
	err  error
}

// Shared returns the test binary's shared running CA, starting it on first
// use. Tests using it must leave nothing another test could trip on (use
// fresh serials and names). The package's TestMain must call Main.
func Shared(t testing.TB) *CA {
	t.Helper()
	shared.once.Do(func() {
		shared.dir, shared.err = os.MkdirTemp("", "catest-")
		if shared.err != nil {
			return
		}
		d, err := newPKI(filepath.Join(shared.dir, "pki"))
		if err != nil {
			shared.err = err
			return
		}
		shared.ca, shared.stop, shared.err = run(d)
	})
	if shared.err != nil {
		t.Fatalf("shared test CA: %v", shared.err)
	}
	return shared.ca
}

// Main runs the tests, then stops the shared CA and removes its files.
// Use it as: func TestMain(m *testing.M) { os.Exit(catest.Main(m)) }.
func Main(m *testing.M) int {
	code := m.Run()
	if shared.stop != nil {
		if err := shared.stop(); err != nil {
			fmt.Fprintf(os.Stderr, "catest: shared step-ca stopped with: %v\n", err)
			code = 1
		}
	}
	if shared.dir != "" {
		_ = os.RemoveAll(shared.dir)
	}
	return code
}

// NewCSR makes a device key and a CSR for it that names nothing, as a
// device does before enrollment.
func NewCSR(t testing.TB) (*ecdsa.PrivateKey, *x509.CertificateRequest) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		t.Fatal(err)
	}
	return key, csr
}

// Revoke revokes cert at the CA with the admin provisioner, as prov-pki
// revoke does.
func (c *CA) Revoke(t testing.TB, cert *x509.Certificate, reason string) {
	t.Helper()
	admin, err := c.AdminProvisioner(Password)
	if err != nil {
		t.Fatal(err)
	}
	serial := cert.SerialNumber.String()
	tok, err := admin.RevokeToken(c.Client.RevokeAudience(), serial, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.Client.Revoke(ctx, serial, tok, reason); err != nil {
		t.Fatalf("revoke %s: %v", serial, err)
	}
}

// Revoked reports whether the CA's current CRL, checked against the
// intermediate, lists cert, and the serials it does list (for a failure
// message).
func (c *CA) Revoked(t testing.TB, cert *x509.Certificate) (bool, []string) {
	t.Helper()
	crl := c.CRL(t)
	var serials []string
	for _, e := range crl.RevokedCertificateEntries {
		if e.SerialNumber.Cmp(cert.SerialNumber) == 0 {
			return true, nil
		}
		serials = append(serials, e.SerialNumber.String())
	}
	return false, serials
}

// CRL is the CA's current CRL, its signature checked against the
// intermediate.
func (c *CA) CRL(t testing.TB) *x509.RevocationList {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	crl, err := c.Client.CRL(ctx, c.Intermediate(t))
	if err != nil {
		t.Fatal(err)
	}
	return crl
}

// Intermediate is the CA's intermediate certificate, which signs its
// certificates and its CRL.
func (c *CA) Intermediate(t testing.TB) *x509.Certificate {
	t.Helper()
	data, err := os.ReadFile(c.IntermediateCert())
	if err != nil {
		t.Fatal(err)
	}
	certs, err := pki.ParseCertificates(data)
	if err != nil {
		t.Fatal(err)
	}
	return certs[0]
}

// Binary is the real step-ca binary on PATH, the version the project
// embeds; without it the test skips (fails under PROV_REQUIRE_ALL=1).
func Binary(t testing.TB) string {
	t.Helper()
	return testenv.Tool(t, "step-ca", "install it with: CGO_ENABLED=0 go install github.com/smallstep/certificates/cmd/step-ca@v0.30.2")
}

// RunBinary runs the real step-ca binary bin on d's unchanged
// configuration until the test ends; it must stop cleanly on SIGTERM.
func RunBinary(t testing.TB, bin string, d *deployment.Deployment) *CA {
	t.Helper()
	pw := filepath.Join(t.TempDir(), "password")
	if err := os.WriteFile(pw, Password, 0o600); err != nil {
		t.Fatal(err)
	}
	// out is read while step-ca may still write.
	var out testenv.Buffer
	cmd := exec.Command(bin, d.CAConfig(), "--password-file", pw) //nolint:gosec // a test tool
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-exited:
			if err != nil {
				t.Errorf("step-ca exit after SIGTERM: %v", err)
			}
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			t.Error("step-ca did not stop on SIGTERM")
		}
		if t.Failed() {
			t.Logf("step-ca output:\n%s", out.String())
		}
	})
	client, err := WaitHealthy(d, cmd.Process.Pid, exited, 30*time.Second)
	if err != nil {
		t.Fatalf("step-ca binary: %v\n%s", err, out.String())
	}
	return &CA{Deployment: d, Client: client}
}
