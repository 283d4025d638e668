package renewal

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"net"
	"net/url"
	"testing"
	"time"

	"github.com/fleetprov/prov/internal/serve"
	"github.com/fleetprov/prov/pki"
	"github.com/fleetprov/prov/pki/pkitest"
)

// Only a renewal of the certificate in use is taken: the same identity,
// role, key and host names, from the deployment's root, ending no sooner.
func TestCheckTakesOnlyARenewal(t *testing.T) {
	ca := pkitest.NewCA(t, "fleet.test")
	roots, err := pki.ParseTrustBundle(ca.RootPEM)
	if err != nil {
		t.Fatal(err)
	}
	key, other := newKey(t), newKey(t)
	now := time.Now().Truncate(time.Second)
	type spec struct {
		issuer  *pkitest.CA
		key     *ecdsa.PrivateKey
		uri     string
		dns     []string
		eku     x509.ExtKeyUsage
		ends    time.Time
		cn      string
		ipAddrs []net.IP
	}
	base := spec{ca, key, "spiffe://fleet.test/core/core", []string{"core.fleet.test"}, x509.ExtKeyUsageServerAuth, now.Add(time.Hour), "core/core",
		[]net.IP{net.ParseIP("10.0.0.1")}}
	cert := func(s spec) *x509.Certificate {
		var uris []*url.URL
		if s.uri != "" {
			u, err := url.Parse(s.uri)
			if err != nil {
				t.Fatal(err)
			}
			uris = append(uris, u)
		}
		return pkitest.Sign(t, &x509.Certificate{Subject: pkix.Name{CommonName: s.cn}, URIs: uris, DNSNames: s.dns, IPAddresses: s.ipAddrs,
			NotBefore: now.Add(-time.Minute), NotAfter: s.ends, KeyUsage: x509.KeyUsageDigitalSignature,
			ExtKeyUsage: []x509.ExtKeyUsage{s.eku, x509.ExtKeyUsageClientAuth}}, s.issuer.Inter, &s.key.PublicKey, s.issuer.InterKey)
	}
	old := cert(base)
	r := New(serve.RenewalConfig{}, nil, Options{Roots: roots})
	w := &watched{Cert: Cert{Name: "tls", Role: pki.RoleCore}}
	with := func(f func(*spec)) spec { s := base; f(&s); return s }
	for _, tc := range []struct {
		name string
		s    spec
		ok   bool
	}{
		{"a renewal", with(func(s *spec) { s.ends = now.Add(2 * time.Hour) }), true},
		{"ending at the same second", base, true},
		{"ending sooner", with(func(s *spec) { s.ends = now.Add(time.Minute) }), false},
		{"another key", with(func(s *spec) { s.key = other }), false},
		{"another identity", with(func(s *spec) { s.uri, s.cn = "spiffe://fleet.test/core/other", "core/other" }), false},
		{"another role", with(func(s *spec) { s.uri, s.cn = "spiffe://fleet.test/proxy/core", "proxy/core" }), false},
		{"other host names", with(func(s *spec) { s.dns = []string{"evil.example.com"} }), false},
		{"other addresses", with(func(s *spec) { s.ipAddrs = nil }), false},
		{"no server usage", with(func(s *spec) { s.eku = x509.ExtKeyUsageCodeSigning }), false},
		{"another deployment's CA", with(func(s *spec) { s.issuer = pkitest.NewCA(t, "fleet.test") }), false},
	} {
		leaf := cert(tc.s)
		err := r.check(w, old, []*x509.Certificate{leaf, tc.s.issuer.Inter})
		if tc.ok != (err == nil) || (err != nil && !errors.Is(err, ErrBadRenewal)) {
			t.Errorf("%s: %v", tc.name, err)
		}
	}
	if err := r.check(w, old, nil); !errors.Is(err, ErrBadRenewal) {
		t.Errorf("no chain: %v", err)
	}

	// A certificate of no identity (Role empty: the proxy's console's)
	// stays one: the same CN, key and hosts, and still no URI.
	console := with(func(s *spec) { s.uri, s.cn = "", "console/p1" })
	oldConsole := cert(console)
	wc := &watched{Cert: Cert{Name: "console"}}
	for _, tc := range []struct {
		name string
		s    spec
		ok   bool
	}{
		{"a renewal", with(func(s *spec) { s.uri, s.cn, s.ends = "", "console/p1", now.Add(2*time.Hour) }), true},
		{"naming an identity", with(func(s *spec) { s.cn = "console/p1" }), false},
		{"another CN", with(func(s *spec) { s.uri, s.cn = "", "console/p2" }), false},
		{"another key", with(func(s *spec) { s.uri, s.cn, s.key = "", "console/p1", other }), false},
		{"other host names", with(func(s *spec) { s.uri, s.cn, s.dns = "", "console/p1", []string{"evil.example.com"} }), false},
	} {
		err := r.check(wc, oldConsole, []*x509.Certificate{cert(tc.s), tc.s.issuer.Inter})
		if tc.ok != (err == nil) || (err != nil && !errors.Is(err, ErrBadRenewal)) {
			t.Errorf("console certificate, %s: %v", tc.name, err)
		}
	}
}

func newKey(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}
