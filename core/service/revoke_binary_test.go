package service_test

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/fleetprov/prov/core/contract/coreapi"
	"github.com/fleetprov/prov/core/coretest"
	"github.com/fleetprov/prov/internal/testenv"
	"github.com/fleetprov/prov/pki"
	"github.com/fleetprov/prov/pki/ca/catest"
	"github.com/fleetprov/prov/pki/pkitest"
	"github.com/fleetprov/prov/pki/stepca"
)

const stepCAHint = "install it with: CGO_ENABLED=0 go install github.com/smallstep/certificates/cmd/step-ca@v0.30.2"

// caSwitch stands between core and the real step-ca: a TCP forwarder the
// test turns off (connections are cut, new ones closed at once: core sees
// a CA that is down) and on again.
type caSwitch struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	up     bool
	conns  map[net.Conn]bool
}

func newCASwitch(t *testing.T, caURL string) (*caSwitch, string) {
	t.Helper()
	u, err := url.Parse(caURL)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &caSwitch{ln: ln, target: u.Host, conns: map[net.Conn]bool{}}
	go s.serve()
	t.Cleanup(func() {
		_ = ln.Close()
		s.set(false)
	})
	// The CA's certificate names the host, not the port.
	u.Host = net.JoinHostPort(u.Hostname(), fmt.Sprint(ln.Addr().(*net.TCPAddr).Port))
	return s, u.String()
}

func (s *caSwitch) serve() {
	for {
		in, err := s.ln.Accept()
		if err != nil {
			return
		}
		go s.forward(in)
	}
}

func (s *caSwitch) forward(in net.Conn) {
	s.mu.Lock()
	up := s.up
	s.mu.Unlock()
	if !up {
		_ = in.Close()
		return
	}
	out, err := net.Dial("tcp", s.target)
	if err != nil {
		_ = in.Close()
		return
	}
	s.mu.Lock()
	s.conns[in], s.conns[out] = true, true
	s.mu.Unlock()
	go func() { _, _ = io.Copy(out, in); _ = out.Close() }()
	_, _ = io.Copy(in, out)
	_ = in.Close()
}

// set turns the CA on or off; off cuts every open connection.
func (s *caSwitch) set(up bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.up = up
	if !up {
		for c := range s.conns {
			_ = c.Close()
		}
		clear(s.conns)
	}
}

// renew asks step-ca to renew cert over mTLS, as prov-device (and `step ca
// renew`) do.
func renew(t *testing.T, c *catest.CA, cert *tls.Certificate) error {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(cert.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	var chain []*x509.Certificate
	for _, raw := range cert.Certificate {
		x, err := x509.ParseCertificate(raw)
		if err != nil {
			t.Fatal(err)
		}
		chain = append(chain, x)
	}
	pkitest.WriteFile(t, certFile, pkitest.PEM(chain...), 0o644)
	pkitest.WriteFile(t, keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600)
	kp, err := pki.LoadKeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	bundle, err := pki.LoadTrustBundle(c.RootCert())
	if err != nil {
		t.Fatal(err)
	}
	client, err := stepca.New(c.CAURL, bundle, stepca.WithClientCertificate(kp))
	if err != nil {
		t.Fatal(err)
	}
	_, err = client.Renew(ctx)
	return err
}

// refusedByStepCA fails the test unless err is step-ca refusing.
func refusedByStepCA(t *testing.T, what string, err error) {
	t.Helper()
	var se *stepca.Error
	if !errors.As(err, &se) || se.Status < 400 || se.Status >= 500 {
		t.Fatalf("%s: %v; want step-ca's refusal", what, err)
	}
}

// Finding 1, with the real step-ca binary: a device enrolled (the proxy
// recorded its certificate) and revoked before it ever called core kept a
// certificate step-ca renewed, because core revoked only what it had seen.
// Here the revoke comes while core cannot reach step-ca: it is
// acknowledged, shown as pending, survives a restart of core, and once
// step-ca answers the certificate is revoked there and its renewal fails.
func TestRevokeBeforeFirstCallReachesStepCA(t *testing.T) {
	bin := testenv.Tool(t, "step-ca", stepCAHint)
	c := catest.RunBinary(t, bin, catest.NewPKI(t))
	sw, viaSwitch := newCASwitch(t, c.CAURL)
	dir := t.TempDir()
	cfg := coretest.Config(t, c.Deployment, dir, caSectionAt(c, viaSwitch))
	core := coretest.Run(t, c, cfg, dir)
	d := core.Register(t, "rpi4", coretest.RPi4(81))
	cert := core.Enrolled(t, d.Serial, 0) // issued by step-ca, recorded by "the proxy"; core never sees it

	got, err := core.Client(t, core.Admin(t)).Revoke(ctx, d.Serial, "stolen before delivery")
	if err != nil {
		t.Fatalf("revoke with step-ca down: %v", err)
	}
	if got.Status != coreapi.StatusRevoked || len(got.PendingCARevocations) != 1 || got.PendingCARevocations[0].Serial != cert.Leaf.SerialNumber.String() ||
		got.PendingCARevocations[0].LastError == "" {
		t.Fatalf("the revoke's answer with step-ca down: %+v", got)
	}
	core.Stop()

	core = coretest.Run(t, c, cfg, dir)
	admin := core.Client(t, core.Admin(t))
	if again, err := admin.Device(ctx, d.Serial); err != nil || len(again.PendingCARevocations) != 1 {
		t.Fatalf("after core's restart: %+v %v", again, err)
	}
	sw.set(true)
	if err := testenv.WaitFor(time.Minute, func() error {
		d, err := admin.Device(ctx, d.Serial)
		if err != nil {
			return err
		}
		if len(d.PendingCARevocations) > 0 {
			return fmt.Errorf("still pending at step-ca: %+v", d.PendingCARevocations)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	refusedByStepCA(t, "renewal of the revoked device's enrollment certificate", renew(t, c, cert))
	if ok, serials := c.Revoked(t, cert.Leaf); !ok {
		t.Fatalf("not on step-ca's CRL: %v", serials)
	}
	events, err := admin.DeviceAudit(ctx, d.Serial, 0)
	if err != nil {
		t.Fatal(err)
	}
	if last := events[len(events)-1]; last.Action != "revoked at the CA" || last.Detail["serial"] != cert.Leaf.SerialNumber.String() {
		t.Fatalf("the audit trail's last event: %+v", last)
	}
}

// The revocation bound with the real step-ca binary: from an admin's
// revoke to the device refused by core's API, by the broker (its open
// session closed, a new connection refused) and by step-ca's renewal. It
// logs the times (run with -v); it asserts what is refused, not how fast.
func TestRevocationBound(t *testing.T) {
	bin := testenv.Tool(t, "step-ca", stepCAHint)
	c := catest.RunBinary(t, bin, catest.NewPKI(t))
	dir := t.TempDir()
	core := coretest.Run(t, c, coretest.Config(t, c.Deployment, dir, caSection(c)), dir)
	d := core.Register(t, "rpi4", coretest.RPi4(82))
	cert := core.Enrolled(t, d.Serial, 0)
	dev := core.Client(t, cert)
	if _, err := dev.Device(ctx, d.Serial); err != nil {
		t.Fatal(err)
	}
	tlsCfg := deviceTLS(t, c, cert)
	m, err := dialMQTT(t, core.MQTTAddr, tlsCfg, coreapi.DeviceClientID(d.Serial))
	if err != nil {
		t.Fatal(err)
	}
	m.subscribe(t, coreapi.DeviceTopic(d.Serial))

	t0 := time.Now()
	if _, err := core.Client(t, core.Admin(t)).Revoke(ctx, d.Serial, "bound"); err != nil {
		t.Fatal(err)
	}
	acked := time.Since(t0)
	// Refused as revoked at core, or, if core's CRL poll already saw step-ca
	// revoke it, as a revoked certificate: either way, refused.
	var se *coreapi.StatusError
	if _, err := dev.Device(ctx, d.Serial); !errors.As(err, &se) || (se.Body.Code != coreapi.CodeRevoked && se.Body.Code != coreapi.CodeUnauthenticated) {
		t.Fatalf("the API after the revoke: %v", err)
	}
	api := time.Since(t0)
	if !m.closedWithin(10 * time.Second) {
		t.Fatal("the open MQTT session was not closed")
	}
	session := time.Since(t0)
	// Refused by the registry (CONNACK not authorized) or, once core's CRL
	// poll saw step-ca revoke it, at the TLS handshake (the broker closes
	// the connection before CONNECT): either way, refused.
	if _, err := dialMQTT(t, core.MQTTAddr, tlsCfg, coreapi.DeviceClientID(d.Serial)); err == nil || (!refusedWith(err, reasonNotAuthorized) && !closedByBroker(err)) {
		t.Fatalf("a new MQTT connection: %v", err)
	}
	connect := time.Since(t0)
	refusedByStepCA(t, "renewal after the revoke", renew(t, c, cert))
	renewal := time.Since(t0)
	t.Logf("revocation bound (step-ca binary): revoke acknowledged %v; refused by the API %v, broker session closed %v, "+
		"new broker connection refused %v, step-ca renewal refused %v (all from the admin's request)",
		acked.Round(time.Millisecond), api.Round(time.Millisecond), session.Round(time.Millisecond), connect.Round(time.Millisecond),
		renewal.Round(time.Millisecond))
}
