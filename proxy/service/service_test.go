package service_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fleetprov/prov/core/contract/coreapi"
	"github.com/fleetprov/prov/core/contract/imagespec"
	"github.com/fleetprov/prov/core/coretest"
	"github.com/fleetprov/prov/deviceclient/inspect"
	"github.com/fleetprov/prov/internal/testenv/browser"
	"github.com/fleetprov/prov/internal/testenv/pgtest"
	"github.com/fleetprov/prov/pki"
	"github.com/fleetprov/prov/pki/ca/catest"
	"github.com/fleetprov/prov/pki/signedimage"
	"github.com/fleetprov/prov/proxy/auditlog"
	"github.com/fleetprov/prov/proxy/config"
	"github.com/fleetprov/prov/proxy/contract/enrollapi"
	"github.com/fleetprov/prov/proxy/enroll"
	"github.com/fleetprov/prov/proxy/proxytest"
	"github.com/fleetprov/prov/proxy/service"
)

var ctx = context.Background()

type env struct {
	core    *coretest.Core
	proxy   *proxytest.Proxy
	url     string
	console string // the console's own listener, which browsers accept
	record  string
	roots   *pki.TrustBundle
}

// start runs a core and a proxy for the shared CA; vouching is YAML for the
// proxy's vouching section.
func start(t testing.TB, vouching string, opts ...service.Option) *env {
	t.Helper()
	return startWith(t, "", vouching, opts...)
}

// startWith also passes YAML to core's configuration.
func startWith(t testing.TB, coreYAML, vouching string, opts ...service.Option) *env {
	t.Helper()
	core := coretest.Start(t, coreYAML)
	p := proxytest.Start(t, core, vouching, opts...)
	roots, err := pki.LoadTrustBundle(core.RootCert())
	if err != nil {
		t.Fatal(err)
	}
	return &env{core: core, proxy: p, url: p.URL, console: p.ConsoleURL, record: p.Record, roots: roots}
}

// The shared step-ca, and the private PostgreSQL cluster for a core on
// PostgreSQL (sharedbatch_test.go), and the headless browser
// (browser_test.go).
func TestMain(m *testing.M) { os.Exit(browser.After(pgtest.After(catest.Main(m)))) }

const local = "networks: [\"127.0.0.0/8\"]\n"

// device is a simulated new board: a key and a CSR that names nothing.
type device struct {
	key crypto.Signer
	csr string
}

func newDevice(t testing.TB) *device {
	t.Helper()
	k, csr := catest.NewCSR(t)
	return &device{key: k, csr: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csr.Raw}))}
}

// enroll posts an enrollment the way a device does: it trusts only the
// root, and wants a proxy at the other end.
func (e *env) enroll(t testing.TB, body any) (int, *enrollapi.EnrollResponse, *enrollapi.Error) {
	t.Helper()
	var r enrollapi.EnrollResponse
	code, ae := e.post(t, enrollapi.PathEnroll, body, &r)
	if code != http.StatusOK {
		return code, nil, ae
	}
	return code, &r, nil
}

// post posts body (a string as it is, anything else as JSON) to path as a
// device does, decoding a 200 answer into out.
func (e *env) post(t testing.TB, path string, body, out any) (int, *enrollapi.Error) {
	t.Helper()
	var raw []byte
	switch b := body.(type) {
	case string:
		raw = []byte(b)
	default:
		var err error
		if raw, err = json.Marshal(b); err != nil {
			t.Fatal(err)
		}
	}
	cfg := pki.ClientTLSConfig(nil, e.roots, pki.ClientOptions{ServerRoles: []pki.Role{pki.RoleProxy}})
	hc := &http.Client{Timeout: 60 * time.Second, Transport: &http.Transport{TLSClientConfig: cfg, DisableKeepAlives: true}}
	resp, err := hc.Post(e.url+path, "application/json", bytes.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode == http.StatusOK {
		if err := json.Unmarshal(b, out); err != nil {
			t.Fatal(err)
		}
		return resp.StatusCode, nil
	}
	var ae enrollapi.Error
	_ = json.Unmarshal(b, &ae)
	return resp.StatusCode, &ae
}

func req(board, hw string, d *device) enrollapi.EnrollRequest {
	return enrollapi.EnrollRequest{Board: board, HardwareID: hw, CSR: d.csr}
}

func TestGoodEnrollment(t *testing.T) {
	e := start(t, local)
	d := newDevice(t)
	code, r, ae := e.enroll(t, req("rpi4", "10000000abcdef12\x00", d))
	if code != http.StatusOK {
		t.Fatalf("enroll: %d %+v", code, ae)
	}
	if r.Serial != "6fd5ce8f6a" || r.MQTTTopic != coreapi.DeviceTopic(r.Serial) || r.CoreURL == "" || r.CAURL == "" || r.MQTTURL == "" || r.Root == "" {
		t.Fatalf("answer %+v", r)
	}
	chain, err := pki.ParseCertificates([]byte(r.Certificate))
	if err != nil {
		t.Fatal(err)
	}
	leaf := chain[0]
	// Exactly the device identity, chaining to the root, for the device's key.
	id, err := e.roots.Verify(chain, pki.VerifyOptions{KeyUsage: x509.ExtKeyUsageClientAuth, Roles: []pki.Role{pki.RoleDevice}})
	if err != nil || id.Name != r.Serial || len(leaf.URIs) != 1 || len(leaf.DNSNames) > 0 || leaf.Subject.CommonName != r.Serial {
		t.Fatalf("certificate %v %v %v", id, err, leaf.URIs)
	}
	if !d.key.Public().(*ecdsa.PublicKey).Equal(leaf.PublicKey) {
		t.Fatal("the certificate is not for the device's key")
	}
	// The first bundle is the device's and passes its checks.
	bundle, err := base64.StdEncoding.DecodeString(r.Bundle)
	if err != nil {
		t.Fatal(err)
	}
	v, img, err := signedimage.VerifyBytes(bundle, signedimage.VerifyOptions{Roots: e.roots, Serial: r.Serial, MaxImageSize: imagespec.MaxImageSize})
	if err != nil || v.Generation != r.Generation {
		t.Fatalf("bundle: %v", err)
	}
	if _, err := inspect.Inspect(bytes.NewReader(img), int64(len(img)), inspect.Expect{Rules: imagespec.DefaultRules(), Serial: r.Serial, Generation: v.Generation}); err != nil {
		t.Fatal(err)
	}
	// The certificate works at core.
	cert := &tls.Certificate{PrivateKey: d.key, Leaf: leaf}
	for _, c := range chain {
		cert.Certificate = append(cert.Certificate, c.Raw)
	}
	st, err := e.core.Client(t, cert).Device(ctx, r.Serial)
	if err != nil || st.Generation != r.Generation {
		t.Fatalf("the device at core: %+v %v", st, err)
	}
	admin := e.core.Client(t, e.core.Admin(t))
	full, err := admin.Device(ctx, r.Serial)
	if err != nil || len(full.Issued) != 1 || full.Issued[0].Serial != leaf.SerialNumber.String() {
		t.Fatalf("core does not know the issued certificate: %+v %v", full, err)
	}
	// The factory record has it, and verifies.
	n, _, err := auditlog.Verify(e.record)
	if err != nil || n != 1 {
		t.Fatalf("factory record: %d %v", n, err)
	}
	_ = auditlog.Read(e.record, func(rec auditlog.Record) error {
		if rec.Result != auditlog.Enrolled || rec.Serial != r.Serial || rec.CertSerial != leaf.SerialNumber.String() || rec.Source != "127.0.0.1" {
			t.Errorf("record %+v", rec)
		}
		return nil
	})
}

func TestVouchingRules(t *testing.T) {
	dir := t.TempDir()
	manifest := filepath.Join(dir, "batch.csv")
	if err := os.WriteFile(manifest, []byte("board,hardwareId\nrpi4,10000000000000a1\nrpi4,10000000000000a2\nbbb,1813BBBK0001\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	closed := filepath.Join(dir, "closed.csv")
	if err := os.WriteFile(closed, []byte("rpi4,10000000000000c1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	e := start(t, local+fmt.Sprintf(`batches:
  - {name: open, manifest: %q, quota: 2, group: line-b}
  - {name: closed, manifest: %q, notBefore: 2020-01-01T00:00:00Z, notAfter: 2021-01-01T00:00:00Z}
`, manifest, closed))
	if code, r, ae := e.enroll(t, req("rpi4", "10000000000000a1", newDevice(t))); code != http.StatusOK {
		t.Fatalf("a manifest device: %d %+v", code, ae)
	} else if d, err := e.core.Client(t, e.core.Admin(t)).Device(ctx, r.Serial); err != nil || d.Group != "line-b" {
		t.Fatalf("the batch's group: %+v %v", d, err)
	}
	for _, tc := range []struct {
		name, board, hw string
		code            int
		rule            string
	}{
		{"not in any manifest", "rpi4", "10000000000000ff", 403, "manifest"},
		{"window closed", "rpi4", "10000000000000c1", 403, "window"},
		{"second of a quota of 2", "bbb", "1813BBBK0001", 200, ""},
		{"quota exhausted", "rpi4", "10000000000000a2", 403, "quota"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, _, ae := e.enroll(t, req(tc.board, tc.hw, newDevice(t)))
			if code != tc.code || (tc.rule != "" && ae.Code != enrollapi.RefusalRule(tc.rule).Code()) {
				t.Fatalf("%d %+v", code, ae)
			}
		})
	}
	// A re-enrollment of a device already counted does not use quota.
	if code, _, ae := e.enroll(t, enrollapi.EnrollRequest{Board: "rpi4", HardwareID: "10000000000000a1", CSR: newDevice(t).csr}); code != http.StatusForbidden || ae.Code != "refused_reenrollment" {
		t.Fatalf("re-enrollment with another key under deny: %d %+v", code, ae)
	}
	// The factory record names each refusal's rule.
	var rules []string
	if err := auditlog.Read(e.record, func(rec auditlog.Record) error {
		rules = append(rules, rec.Result+":"+rec.Rule)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if want := "[enrolled: refused:manifest refused:window enrolled: refused:quota refused:reenrollment]"; fmt.Sprint(rules) != want {
		t.Fatalf("factory record %v, want %s", rules, want)
	}
}

func TestOutsideTheFactoryNetwork(t *testing.T) {
	e := start(t, "networks: [\"10.0.0.0/8\"]\n")
	code, _, ae := e.enroll(t, req("rpi4", "10000000abcdef12", newDevice(t)))
	if code != http.StatusForbidden || ae.Code != "refused_network" {
		t.Fatalf("%d %+v", code, ae)
	}
	if n := count(t, e); n != 0 {
		t.Fatalf("%d records at core", n)
	}
	// Garbage from outside is refused for the network, not parsed.
	code, _, ae = e.enroll(t, "{not json")
	if code != http.StatusForbidden || ae.Code != "refused_network" {
		t.Fatalf("garbage from outside: %d %+v", code, ae)
	}
}

func count(t *testing.T, e *env) int {
	t.Helper()
	l, err := e.core.Client(t, e.core.Admin(t)).List(ctx, "", 1000)
	if err != nil {
		t.Fatal(err)
	}
	return len(l.Devices)
}

func TestReenrollmentPolicies(t *testing.T) {
	for _, tc := range []struct {
		policy                 string
		sameKey, otherKey      int
		revokesTheOldCertifcte bool
	}{
		{"deny", 200, 403, false},
		{"same-key-only", 200, 403, false},
		{"allow", 200, 200, true},
	} {
		t.Run(tc.policy, func(t *testing.T) {
			e := start(t, local+"reenrollment: "+tc.policy+"\n")
			hw := fmt.Sprintf("100000000000%04x", len(tc.policy))
			d := newDevice(t)
			code, first, ae := e.enroll(t, req("rpi4", hw, d))
			if code != 200 {
				t.Fatalf("first: %d %+v", code, ae)
			}
			// The same key again: a retry (deny) or a lost certificate.
			if code, _, ae := e.enroll(t, req("rpi4", hw, d)); code != tc.sameKey {
				t.Fatalf("same key: %d %+v", code, ae)
			}
			// A reflashed card: a new key.
			code, _, ae = e.enroll(t, req("rpi4", hw, newDevice(t)))
			if code != tc.otherKey {
				t.Fatalf("another key: %d %+v", code, ae)
			}
			if tc.revokesTheOldCertifcte {
				chain, _ := pki.ParseCertificates([]byte(first.Certificate))
				if ok, _ := e.core.Revoked(t, chain[0]); !ok {
					t.Fatal("allow: the old certificate was not revoked")
				}
			}
			if n := count(t, e); n != 1 {
				t.Fatalf("%d records at core for one device", n)
			}
		})
	}
}

func TestConcurrentEnrollmentsOfOneID(t *testing.T) {
	e := start(t, local+"rate: 1000\nburst: 1000\n")
	var ok, refused atomic.Int32
	var wg sync.WaitGroup
	serials := sync.Map{}
	for range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			code, r, ae := e.enroll(t, req("bbai", "1813BBAI0050", newDevice(t)))
			switch {
			case code == 200:
				ok.Add(1)
				serials.Store(r.Serial, true)
			case code == 403 && ae.Code == "refused_reenrollment":
				refused.Add(1)
			default:
				t.Errorf("%d %+v", code, ae)
			}
		}()
	}
	wg.Wait()
	if ok.Load() != 1 || refused.Load() != 49 {
		t.Fatalf("%d enrolled, %d refused; want 1 and 49 (50 keys claiming one hardware ID)", ok.Load(), refused.Load())
	}
	if n := count(t, e); n != 1 {
		t.Fatalf("%d records at core", n)
	}
	d, err := e.core.Client(t, e.core.Admin(t)).List(ctx, "", 10)
	if err != nil || len(d.Devices) != 1 || len(d.Devices[0].Issued) != 1 {
		t.Fatalf("issued certificates: %+v %v", d, err)
	}
}

func TestHostileInput(t *testing.T) {
	e := start(t, local+"rate: 1000\nburst: 1000\n")
	d := newDevice(t)
	named := func(tmpl *x509.CertificateRequest) string {
		k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		der, _ := x509.CreateCertificateRequest(rand.Reader, tmpl, k)
		return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))
	}
	tampered := []byte(d.csr)
	tampered[len(tampered)/2] ^= 1
	for _, body := range []any{
		"not json",
		`{"board":"rpi4","hardwareId":"10000000abcdef12","csr":"x","extra":1}`,
		req("rpi4", "", d),
		req("rpi4", strings.Repeat("1", 5000), d),
		req("rpi4", "10000000abcdef1\n", d),
		req("bbb", "../../etc/passwd", d),
		req("bbb", "%2e%2e%2fBBBK0001", d),
		req("bbb", "1813+BBBK#001*", d),
		req("rpi4", "١٠٠٠٠٠٠٠abcdef12", d),
		req("bbb", "1813BBBK\u200f0001", d),
		req("rpi5", "10000000abcdef12", d),
		enrollapi.EnrollRequest{Board: "rpi4", HardwareID: "10000000abcdef12", CSR: ""},
		enrollapi.EnrollRequest{Board: "rpi4", HardwareID: "10000000abcdef12", CSR: string(tampered)},
		enrollapi.EnrollRequest{Board: "rpi4", HardwareID: "10000000abcdef12", CSR: named(&x509.CertificateRequest{Subject: pkix.Name{CommonName: "admin/eve"}})},
		enrollapi.EnrollRequest{Board: "rpi4", HardwareID: "10000000abcdef12", CSR: named(&x509.CertificateRequest{DNSNames: []string{"core.fleet.test"}})},
		enrollapi.EnrollRequest{Board: "rpi4", HardwareID: "10000000abcdef12", CSR: d.csr + d.csr},
		enrollapi.EnrollRequest{Board: "rpi4", HardwareID: "10000000abcdef12", CSR: rsaCSR(t)},
		req("rpi4", "10000000abcdef12\x00\x00", d),
		"",
		`{"board":"rpi4","hardwareId":"10000000abcdef12","csr":"` + strings.Repeat("A", enrollapi.MaxRequestBody) + `"}`,
	} {
		code, _, ae := e.enroll(t, body)
		want := http.StatusBadRequest
		if s, ok := body.(string); ok && len(s) > enrollapi.MaxRequestBody {
			want = http.StatusRequestEntityTooLarge // naming the limit (issue 14)
		}
		if code != want {
			t.Errorf("%.80v: %d %+v, want %d", body, code, ae, want)
		}
	}
	if n := count(t, e); n != 0 {
		t.Fatalf("hostile input wrote %d records at core", n)
	}
	// Every attempt is in the factory record, and the chain holds.
	if n, _, err := auditlog.Verify(e.record); err != nil || n != 20 {
		t.Fatalf("factory record: %d records, %v", n, err)
	}
}

// rsaCSR is a CSR for an RSA key: not a key type a board gets.
func rsaCSR(t *testing.T) string {
	t.Helper()
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, k)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))
}

// failing wraps the real core and CA clients and fails one step once.
type failing struct {
	enroll.Core
	enroll.CA
	step  string
	fired atomic.Bool
	token atomic.Value // the last token sent to step-ca
}

func (f *failing) fail(step string) error {
	if f.step == step && f.fired.CompareAndSwap(false, true) {
		return errors.New("injected failure at " + step)
	}
	return nil
}

func (f *failing) Register(ctx context.Context, r coreapi.RegisterRequest) (*coreapi.Device, bool, error) {
	if err := f.fail("register"); err != nil {
		return nil, false, err
	}
	return f.Core.Register(ctx, r)
}

func (f *failing) SignFor(ctx context.Context, csr *x509.CertificateRequest, ott string, life time.Duration) ([]*x509.Certificate, error) {
	f.token.Store(ott)
	if err := f.fail("sign"); err != nil {
		return nil, err
	}
	return f.CA.SignFor(ctx, csr, ott, life)
}

func (f *failing) Bundle(ctx context.Context, serial, etag string) (io.ReadCloser, string, error) {
	if err := f.fail("bundle"); err != nil {
		return nil, "", err
	}
	return f.Core.Bundle(ctx, serial, etag)
}

func TestRetryAfterFailures(t *testing.T) {
	for _, step := range []string{"register", "sign", "bundle"} {
		t.Run(step, func(t *testing.T) {
			f := &failing{step: step}
			e := start(t, local, service.WithUpstreams(func(c enroll.Core, a enroll.CA) (enroll.Core, enroll.CA) {
				f.Core, f.CA = c, a
				return f, f
			}))
			d := newDevice(t)
			code, _, ae := e.enroll(t, req("rpi4", "10000000000bad01", d))
			if code != http.StatusBadGateway {
				t.Fatalf("with a failure at %s: %d %+v", step, code, ae)
			}
			code, r, ae := e.enroll(t, req("rpi4", "10000000000bad01", d))
			if code != http.StatusOK {
				t.Fatalf("the retry: %d %+v", code, ae)
			}
			if n := count(t, e); n != 1 {
				t.Fatalf("%d records at core", n)
			}
			if r.Serial == "" {
				t.Fatal("no serial")
			}
		})
	}
	t.Run("replayed token", func(t *testing.T) {
		f := &failing{}
		e := start(t, local, service.WithUpstreams(func(c enroll.Core, a enroll.CA) (enroll.Core, enroll.CA) {
			f.Core, f.CA = c, a
			return f, f
		}))
		d := newDevice(t)
		if code, _, ae := e.enroll(t, req("rpi4", "10000000000bad02", d)); code != 200 {
			t.Fatalf("%d %+v", code, ae)
		}
		tok := f.token.Load().(string)
		block, _ := pem.Decode([]byte(d.csr))
		csr, _ := x509.ParseCertificateRequest(block.Bytes)
		if _, err := e.core.CA.Client.Sign(ctx, csr, tok); err == nil {
			t.Fatal("step-ca accepted the proxy's token a second time")
		}
	})
}

func TestConsoleStateAndMetrics(t *testing.T) {
	e := start(t, local)
	if code, _, ae := e.enroll(t, req("rpi4", "1000000000005a7e", newDevice(t))); code != 200 {
		t.Fatalf("%d %+v", code, ae)
	}
	if code, _, _ := e.enroll(t, req("rpi4", "bad", newDevice(t))); code != 400 {
		t.Fatal("a bad ID was not refused")
	}
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: pki.ClientTLSConfig(nil, e.roots, pki.ClientOptions{ServerRoles: []pki.Role{pki.RoleProxy}})}}
	get := func(path string) string {
		resp, err := hc.Get(e.url + path)
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = resp.Body.Close() }()
		b, _ := io.ReadAll(resp.Body)
		return string(b)
	}
	state := get("/console/state")
	for _, want := range []string{`"counts":{"enrolled":1,"refused":1}`, `"hardwareId":"bad"`} {
		if !strings.Contains(state, want) {
			t.Errorf("the console's state lacks %q:\n%s", want, state)
		}
	}
	metrics := get("/metrics")
	for _, want := range []string{`prov_proxy_enrollments_total{result="enrolled"} 1`, `prov_proxy_enrollments_total{result="refused"} 1`} {
		if !strings.Contains(metrics, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
}

func TestProxyFailsClosed(t *testing.T) {
	c := catest.Shared(t)
	p := catest.Proxy
	dir := t.TempDir()
	missing := filepath.Join(dir, "missing")
	wrongPW := filepath.Join(dir, "wrong")
	if err := os.WriteFile(wrongPW, []byte("not the password"), 0o600); err != nil {
		t.Fatal(err)
	}
	base := func(root, cert, key, prov, pw string) string {
		return fmt.Sprintf(`listen: "127.0.0.1:0"
trustBundle: %q
tls: {cert: %q, key: %q}
provisioner: {key: %q, passwordFile: %q}
core: {url: "https://localhost:1"}
ca: {url: "https://localhost:1"}
field: {mqttUrl: "tls://localhost:8883"}
record: {path: %q}
vouching: {networks: ["127.0.0.0/8"]}
`, root, cert, key, prov, pw, filepath.Join(dir, "factory.jsonl"))
	}
	root, cert, key := c.RootCert(), c.IdentityCert(pki.RoleProxy, p), c.IdentityKey(pki.RoleProxy, p)
	prov, pw := c.ProxyProvisionerKey(p), c.ProxyProvisionerPassword(p)
	for name, tc := range map[string]struct{ cfg, want string }{
		"missing root":             {base(missing, cert, key, prov, pw), "trustBundle"},
		"missing client key":       {base(root, cert, missing, prov, pw), "tls"},
		"a core certificate":       {base(root, c.IdentityCert(pki.RoleCore, "core"), c.IdentityKey(pki.RoleCore, "core"), prov, pw), "tls"},
		"missing provisioner key":  {base(root, cert, key, missing, pw), "provisioner.key"},
		"wrong provisioner secret": {base(root, cert, key, prov, wrongPW), "provisioner.key"},
		"no password file":         {base(root, cert, key, prov, missing), "provisioner.passwordFile"},
	} {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "proxy.yaml")
			if err := os.WriteFile(path, []byte(tc.cfg), 0o600); err != nil {
				t.Fatal(err)
			}
			conf, err := config.Load(path)
			if err != nil {
				t.Fatal(err)
			}
			cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			err = service.Run(cctx, conf, slog.New(slog.DiscardHandler), service.WithStarted(func(string) { cancel() }))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Run: %v; want an error naming %q", err, tc.want)
			}
		})
	}
}
