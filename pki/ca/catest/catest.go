// Package catest gives tests a complete deployment PKI made by
// deployment.Init in a temporary directory, and its step-ca running in the
// test process on a free loopback port.
//
// Making a PKI costs about 0.7 s (several 600,000-round key derivations),
// seven times that under the race detector, so tests that only read from the
// CA share one per test binary (Shared); tests that change what others could
// see make their own (Start).
package catest

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

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
}

// NewPKI creates a PKI in a temporary directory. The options, if any, are
// applied to the defaults before Init.
func NewPKI(t testing.TB, opts ...func(*deployment.InitOptions)) *deployment.Deployment {
	t.Helper()
	port, err := freePort()
	if err != nil {
		t.Fatal(err)
	}
	d, err := newPKI(filepath.Join(t.TempDir(), "pki"), port, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func newPKI(dir string, port int, opts ...func(*deployment.InitOptions)) (*deployment.Deployment, error) {
	o := deployment.InitOptions{
		Dir:         dir,
		Password:    Password,
		TrustDomain: TrustDomain,
		CAAddress:   "127.0.0.1:" + strconv.Itoa(port),
		CAHosts:     []string{"localhost", "127.0.0.1"},
		Proxies:     []deployment.ProxySpec{{Name: Proxy}},
	}
	for _, f := range opts {
		f(&o)
	}
	res, err := deployment.Init(context.Background(), o)
	if err != nil {
		return nil, fmt.Errorf("init test PKI: %w", err)
	}
	return res.Deployment, nil
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
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Errorf("step-ca stopped with: %v", err)
		}
	})
	return c
}

func run(d *deployment.Deployment) (*CA, func() error, error) {
	srv, err := ca.NewServer(d.CAConfig(), Password, ca.WithoutRequestLog())
	if err != nil {
		return nil, nil, fmt.Errorf("step-ca: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	stop := func() error {
		cancel()
		return <-done
	}
	client, err := WaitHealthy(d, done, 15*time.Second)
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

// WaitHealthy returns a client of d's CA once it answers /health. It gives
// up when exited delivers (the CA, a goroutine or a process, ended) or after
// timeout.
func WaitHealthy(d *deployment.Deployment, exited <-chan error, timeout time.Duration) (*stepca.Client, error) {
	roots, err := pki.LoadTrustBundle(d.RootCert())
	if err != nil {
		return nil, err
	}
	client, err := stepca.New(d.CAURL, roots)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	for {
		err := client.Health(ctx)
		if err == nil {
			return client, nil
		}
		select {
		case xerr := <-exited:
			return nil, fmt.Errorf("%w at start: %w", errExited, xerr)
		case <-ctx.Done():
			return nil, fmt.Errorf("CA not healthy after %s: %w", timeout, err)
		case <-time.After(50 * time.Millisecond):
		}
	}
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
		port, err := freePort()
		if err != nil {
			shared.err = err
			return
		}
		d, err := newPKI(filepath.Join(shared.dir, "pki"), port)
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

// FreePort returns a loopback TCP port that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	p, err := freePort()
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer func() { _ = ln.Close() }()
	addr, ok := ln.Addr().(*net.TCPAddr)
	if !ok {
		return 0, errors.New("listener address is not TCP")
	}
	return addr.Port, nil
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

// Revoked reports whether the CA's current CRL, checked against the
// intermediate, lists cert, and the serials it does list (for a failure
// message).
func (c *CA) Revoked(t testing.TB, cert *x509.Certificate) (bool, []string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	crl, err := c.Client.CRL(ctx, c.Intermediate(t))
	if err != nil {
		t.Fatal(err)
	}
	var serials []string
	for _, e := range crl.RevokedCertificateEntries {
		if e.SerialNumber.Cmp(cert.SerialNumber) == 0 {
			return true, nil
		}
		serials = append(serials, e.SerialNumber.String())
	}
	return false, serials
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

// RunBinary runs the real step-ca binary bin on d's unchanged
// configuration until the test ends; it must stop cleanly on SIGTERM.
func RunBinary(t testing.TB, bin string, d *deployment.Deployment) *CA {
	t.Helper()
	pw := filepath.Join(t.TempDir(), "password")
	if err := os.WriteFile(pw, Password, 0o600); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
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
	client, err := WaitHealthy(d, exited, 30*time.Second)
	if err != nil {
		t.Fatalf("step-ca binary: %v\n%s", err, out.String())
	}
	return &CA{Deployment: d, Client: client}
}
