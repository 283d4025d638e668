package renewal_test

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/fleetprov/prov/internal/renewal"
	"github.com/fleetprov/prov/internal/serve"
	"github.com/fleetprov/prov/internal/testenv"
	"github.com/fleetprov/prov/pki"
	"github.com/fleetprov/prov/pki/ca/catest"
	"github.com/fleetprov/prov/pki/deployment"
	"github.com/fleetprov/prov/pki/pkitest"
)

// config is the renewal block with test back-offs.
func config(on bool, at, warnLeft float64) serve.RenewalConfig {
	c := serve.RenewalConfig{Enabled: &on, At: at, WarnLeft: warnLeft}
	c.Backoff.Min, c.Backoff.Max = 200*time.Millisecond, time.Second
	c.Default(on)
	return c
}

// fixture is a running CA with a short core certificate for the renewer.
type fixture struct {
	ca      *catest.CA
	roots   *pki.TrustBundle
	issued  *deployment.Issued
	kp      *pki.KeyPair
	keyPEM  []byte
	reg     *prometheus.Registry
	mu      sync.Mutex
	chains  [][]*x509.Certificate // what Installed was told
	renewer *renewal.Renewer
	log     testenv.Buffer // the renewer's log
}

func newFixture(t *testing.T, lifetime time.Duration, caURL func(*catest.CA) string, cfg serve.RenewalConfig) *fixture {
	t.Helper()
	d := catest.NewPKI(t)
	catest.ShortServiceCerts(t, d, 10*time.Second)
	f := &fixture{ca: catest.Run(t, d), reg: prometheus.NewRegistry()}
	f.issued = f.ca.Reissue(t, pki.RoleCore, deployment.DefaultCoreName, lifetime)
	var err error
	if f.kp, err = pki.LoadKeyPair(f.issued.CertFile, f.issued.KeyFile); err != nil {
		t.Fatal(err)
	}
	if f.keyPEM, err = os.ReadFile(f.issued.KeyFile); err != nil {
		t.Fatal(err)
	}
	if f.roots, err = pki.LoadTrustBundle(d.RootCert()); err != nil {
		t.Fatal(err)
	}
	f.renewer = renewal.New(cfg, []renewal.Cert{{Name: "tls", Role: pki.RoleCore, KeyPair: f.kp, CertFile: f.issued.CertFile,
		Installed: func(chain []*x509.Certificate) error {
			f.mu.Lock()
			defer f.mu.Unlock()
			f.chains = append(f.chains, chain)
			return nil
		}}}, renewal.Options{Namespace: "test", CAURL: caURL(f.ca), Roots: f.roots, Log: slog.New(slog.NewTextHandler(io.MultiWriter(tlog{t}, &f.log), nil))})
	f.reg.MustRegister(f.renewer.Collectors()...)
	return f
}

func (f *fixture) run(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.renewer.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
}

func (f *fixture) installed() [][]*x509.Certificate {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([][]*x509.Certificate{}, f.chains...)
}

// Renewed at step-ca when due, again and again, and after the first
// certificate has ended too (so each attempt presents the current one):
// each time the file holds the new chain and the pair in use is it, the key
// file is untouched, the identity, key and names stay, and the expiry
// metric follows.
func TestRenewsWhenDue(t *testing.T) {
	// Most of its time is waiting for certificates to age: it runs beside
	// TestStepCADown (each its own PKI, step-ca and registry).
	t.Parallel()
	f := newFixture(t, 20*time.Second, func(c *catest.CA) string { return c.CAURL }, config(true, 2.0/3, 0.25))
	first := f.kp.Leaf()
	f.run(t)
	if err := testenv.WaitFor(2*time.Minute, func() error {
		if n := len(f.installed()); n < 3 || !time.Now().After(first.NotAfter) {
			return errors.New("waiting for three renewals and the first certificate's end")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	// One more once the first has ended: presented with the first, step-ca
	// would refuse.
	n := len(f.installed())
	if err := testenv.WaitFor(time.Minute, func() error {
		if len(f.installed()) <= n {
			return errors.New("waiting for a renewal after the first certificate ended")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	serials := map[string]bool{first.SerialNumber.String(): true}
	for _, chain := range f.installed() {
		leaf := chain[0]
		if serials[leaf.SerialNumber.String()] {
			t.Fatalf("serial %s twice", leaf.SerialNumber)
		}
		serials[leaf.SerialNumber.String()] = true
		if !bytes.Equal(leaf.RawSubjectPublicKeyInfo, first.RawSubjectPublicKeyInfo) || leaf.URIs[0].String() != first.URIs[0].String() ||
			strings.Join(leaf.DNSNames, ",") != strings.Join(first.DNSNames, ",") {
			t.Fatalf("renewed %v %v, first %v %v", leaf.URIs, leaf.DNSNames, first.URIs, first.DNSNames)
		}
	}
	// Stop the renewer, then compare file, pair and metric at rest.
	onDisk, err := pki.LoadKeyPair(f.issued.CertFile, f.issued.KeyFile)
	if err != nil {
		t.Fatal(err)
	}
	cur := f.kp.Leaf()
	if onDisk.Leaf().NotAfter.Before(cur.NotAfter) || cur.SerialNumber.Cmp(first.SerialNumber) == 0 {
		t.Errorf("on disk %s (ends %s), in use %s (ends %s)", onDisk.Leaf().SerialNumber, onDisk.Leaf().NotAfter, cur.SerialNumber, cur.NotAfter)
	}
	if key, _ := os.ReadFile(f.issued.KeyFile); !bytes.Equal(key, f.keyPEM) {
		t.Error("the key file changed")
	}
	if got := gauge(t, f.reg, "test_certificate_expiry_seconds"); got < float64(first.NotAfter.Unix()) {
		t.Errorf("expiry metric %v, the first certificate ended at %d", got, first.NotAfter.Unix())
	}
	if got := counter(t, f.reg, "test_certificate_renewals_total", "renewed"); got < 4 {
		t.Errorf("renewals_total{renewed} %v", got)
	}
}

// A certificate of no identity (the proxy's console's) is renewed at
// step-ca too: the renewed one still names no identity, keeps its CN, key
// and hosts, and verifies for browsers (pki.VerifyWebServer).
func TestRenewsAConsoleCertificate(t *testing.T) {
	d := catest.NewPKI(t)
	catest.ShortServiceCerts(t, d, 10*time.Second)
	c := catest.Run(t, d)
	issued := c.ReissueConsole(t, catest.Proxy, 15*time.Second)
	kp, err := pki.LoadKeyPair(issued.CertFile, issued.KeyFile)
	if err != nil {
		t.Fatal(err)
	}
	roots, err := pki.LoadTrustBundle(d.RootCert())
	if err != nil {
		t.Fatal(err)
	}
	first := kp.Leaf()
	r := renewal.New(config(true, 2.0/3, 0.25), []renewal.Cert{{Name: "console", KeyPair: kp, CertFile: issued.CertFile}},
		renewal.Options{Namespace: "test", CAURL: c.CAURL, Roots: roots, Log: slog.New(slog.NewTextHandler(tlog{t}, nil))})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	if err := testenv.WaitFor(time.Minute, func() error {
		if kp.Leaf().SerialNumber.Cmp(first.SerialNumber) == 0 {
			return errors.New("waiting for the console certificate's renewal")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	leaf := kp.Leaf()
	if len(leaf.URIs) != 0 || leaf.Subject.CommonName != first.Subject.CommonName || !bytes.Equal(leaf.RawSubjectPublicKeyInfo, first.RawSubjectPublicKeyInfo) {
		t.Errorf("renewed: URIs %v, CN %q; want none and %q, same key", leaf.URIs, leaf.Subject.CommonName, first.Subject.CommonName)
	}
	if err := roots.VerifyWebServer(kp.Chain(), deployment.DefaultHosts, time.Time{}); err != nil {
		t.Errorf("the renewed console certificate: %v", err)
	}
}

// step-ca away: each attempt fails, is counted and retried with back-off;
// under the warning threshold the certificate is a warning (without the
// error behind it); step-ca back, the next attempt renews and the warning
// goes.
func TestStepCADown(t *testing.T) {
	// Waits for certificates to age, beside TestRenewsWhenDue.
	t.Parallel()
	var relay *testenv.Relay
	f := newFixture(t, 45*time.Second, func(c *catest.CA) string {
		relay = testenv.NewRelay(t, "127.0.0.1"+strings.TrimPrefix(c.CAURL, "https://localhost"))
		return "https://" + relay.Addr
	}, config(true, 0.5, 0.3))
	relay.Down()
	// (With step-ca's minute of backdate, this certificate is under the
	// threshold from the start.)
	first := f.kp.Leaf()
	f.run(t)
	if err := testenv.WaitFor(2*time.Minute, func() error {
		if n := counter(t, f.reg, "test_certificate_renewals_total", "failed"); n < 3 {
			return errors.New("waiting for three failed attempts")
		}
		if len(f.renewer.Warnings()) == 0 {
			return errors.New("waiting for the warning")
		}
		if !strings.Contains(f.log.String(), `level=ERROR msg="certificate expires soon and its renewal keeps failing" component=renewal cert=tls`) {
			return errors.New("waiting for the error in the log")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	w := f.renewer.Warnings()
	if len(w) != 1 || !strings.Contains(w[0], "the tls certificate ends at") || !strings.Contains(w[0], "has failed") || strings.Contains(w[0], "127.0.0.1") {
		t.Errorf("warnings %q", w)
	}
	if got := gauge(t, f.reg, "test_certificate_renewal_failures"); got < 3 {
		t.Errorf("renewal_failures %v", got)
	}
	if len(f.installed()) != 0 || f.kp.Leaf().SerialNumber.Cmp(first.SerialNumber) != 0 {
		t.Fatal("renewed while step-ca was away")
	}
	relay.Up()
	if err := testenv.WaitFor(time.Minute, func() error {
		if len(f.installed()) == 0 {
			return errors.New("waiting for the renewal")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if w := f.renewer.Warnings(); len(w) != 0 {
		t.Errorf("still warning after the renewal: %v", w)
	}
	if got := gauge(t, f.reg, "test_certificate_renewal_failures"); got != 0 {
		t.Errorf("renewal_failures %v after the renewal", got)
	}
}

// An identity issued again while the service runs (prov-pki issue
// --force: a new key beside a new certificate) is not written over with a
// renewal of the old one, which would leave a certificate and a key that do
// not match for the next start.
func TestDoesNotOverwriteAReissuedIdentity(t *testing.T) {
	f := newFixture(t, 10*time.Minute, func(c *catest.CA) string { return c.CAURL }, config(true, 2.0/3, 1.0/6))
	// Another key's certificate where core's was (the admin's will do).
	onDisk, err := os.ReadFile(f.ca.IdentityCert(pki.RoleAdmin, deployment.DefaultAdminName))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(f.issued.CertFile, onDisk, 0o644); err != nil { //nolint:gosec // public
		t.Fatal(err)
	}
	if err := f.renewer.Renew(context.Background(), "tls"); !errors.Is(err, renewal.ErrReplaced) {
		t.Fatalf("got %v, want ErrReplaced", err)
	}
	if now, _ := os.ReadFile(f.issued.CertFile); !bytes.Equal(now, onDisk) {
		t.Fatal("the re-issued certificate file was written over")
	}
}

// A certificate without clientAuth (a signer issued before the template
// had it) cannot be renewed: the renewer says so and what to do, without
// asking step-ca.
func TestNotRenewable(t *testing.T) {
	ca := pkitest.NewCA(t, "fleet.test")
	certFile, keyFile := ca.KeyPair(t, pkitest.LeafSpec{CN: "signer/images", URIs: []string{"spiffe://fleet.test/signer/images"},
		EKU: []x509.ExtKeyUsage{x509.ExtKeyUsageCodeSigning}, Ed25519: true})
	kp, err := pki.LoadKeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	// Nothing listens on a closed port: asked, the error would be another.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	_ = ln.Close()
	roots, err := pki.ParseTrustBundle(ca.RootPEM)
	if err != nil {
		t.Fatal(err)
	}
	r := renewal.New(config(true, 2.0/3, 1.0/6), []renewal.Cert{{Name: "signer", Role: pki.RoleSigner, KeyPair: kp, CertFile: certFile}},
		renewal.Options{Namespace: "test", CAURL: "https://" + ln.Addr().String(), Roots: roots})
	if err := r.Renew(context.Background(), "signer"); !errors.Is(err, renewal.ErrNotRenewable) || !strings.Contains(err.Error(), "prov-pki issue") {
		t.Fatalf("got %v, want ErrNotRenewable", err)
	}
}

// With renewal off the certificate is still watched: a warning once in
// its last part of life, saying renewal is off; none before.
func TestWatchedWhenOff(t *testing.T) {
	ca := pkitest.NewCA(t, "fleet.test")
	roots, err := pki.ParseTrustBundle(ca.RootPEM)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	pair := func(notBefore, notAfter time.Time) *pki.KeyPair {
		certFile, keyFile := ca.KeyPair(t, pkitest.LeafSpec{CN: "core/core", URIs: []string{"spiffe://fleet.test/core/core"}, NotBefore: notBefore, NotAfter: notAfter})
		kp, err := pki.LoadKeyPair(certFile, keyFile)
		if err != nil {
			t.Fatal(err)
		}
		return kp
	}
	for _, tc := range []struct {
		name string
		kp   *pki.KeyPair
		want string
	}{
		{"fresh", pair(now.Add(-time.Hour), now.Add(5*time.Hour)), ""},
		{"late", pair(now.Add(-5*time.Hour), now.Add(30*time.Minute)), "renewal is off"},
		{"ended", pair(now.Add(-5*time.Hour), now.Add(-time.Minute)), "expired at"},
	} {
		r := renewal.New(config(false, 2.0/3, 1.0/6), []renewal.Cert{{Name: "tls", Role: pki.RoleCore, KeyPair: tc.kp}},
			renewal.Options{Namespace: "test", Roots: roots})
		reg := prometheus.NewRegistry()
		reg.MustRegister(r.Collectors()...)
		w := strings.Join(r.Warnings(), "; ")
		if (tc.want == "") != (w == "") || !strings.Contains(w, tc.want) {
			t.Errorf("%s: warnings %q, want %q", tc.name, w, tc.want)
		}
		if got := gauge(t, reg, "test_certificate_expiry_seconds"); got != float64(tc.kp.Leaf().NotAfter.Unix()) {
			t.Errorf("%s: expiry metric %v", tc.name, got)
		}
	}
}

// gauge is the value of a gauge (its only series).
func gauge(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.GetMetric()) > 0 {
			return mf.GetMetric()[0].GetGauge().GetValue()
		}
	}
	return -1
}

// counter is the value of a counter's series whose result label is result.
func counter(t *testing.T, reg *prometheus.Registry, name, result string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "result" && l.GetValue() == result {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

// tlog sends the renewer's log to the test's.
type tlog struct{ t *testing.T }

func (w tlog) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}
