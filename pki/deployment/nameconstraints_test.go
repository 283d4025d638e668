package deployment_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"go.step.sm/crypto/pemutil"

	"github.com/fleetprov/prov/internal/testenv"
	"github.com/fleetprov/prov/pki"
	"github.com/fleetprov/prov/pki/ca/catest"
	"github.com/fleetprov/prov/pki/deployment"
	"github.com/fleetprov/prov/pki/stepca"
)

// Finding 6 of issue 13: the intermediate's name constraints were not
// critical (RFC 5280 4.2.1.10: they MUST be) and named URIs only. They are
// now critical, and permit exactly the host names given to init (CA, core,
// proxies; a DNS constraint also covers names below it, as RFC 5280 says)
// and, when no IP address was given, no IP address at all; likewise DNS.
func TestIntermediateNameConstraints(t *testing.T) {
	for _, tc := range []struct {
		name                 string
		opts                 func(*deployment.InitOptions)
		dns, ips             []string
		excludedDNS, exclIPs []string
	}{
		{
			name: "names and addresses",
			opts: func(o *deployment.InitOptions) {
				o.CAHosts = []string{"ca.fleet.test", "10.0.0.1"}
				o.CoreHosts = []string{"core.fleet.test"}
				o.Proxies = []deployment.ProxySpec{{Name: catest.Proxy, Hosts: []string{"proxy1.factory.lan", "10.1.0.5", "ca.fleet.test"}}}
			},
			dns: []string{"ca.fleet.test", "core.fleet.test", "proxy1.factory.lan"},
			ips: []string{"10.0.0.1/32", "10.1.0.5/32"},
		},
		{
			name: "names only: no IP address",
			opts: func(o *deployment.InitOptions) {
				o.CAHosts = []string{"ca.fleet.test"}
				o.CoreHosts = []string{"core.fleet.test"}
				o.Proxies = []deployment.ProxySpec{{Name: catest.Proxy, Hosts: []string{"proxy1.factory.lan"}}}
			},
			dns:     []string{"ca.fleet.test", "core.fleet.test", "proxy1.factory.lan"},
			exclIPs: []string{"0.0.0.0/0", "::/0"},
		},
		{
			name: "addresses only: no DNS name",
			opts: func(o *deployment.InitOptions) {
				o.CAHosts = []string{"10.0.0.1"}
				o.CoreHosts = []string{"10.0.0.2", "fd00::2"}
				o.Proxies = []deployment.ProxySpec{{Name: catest.Proxy, Hosts: []string{"10.1.0.5"}}}
			},
			ips:         []string{"10.0.0.1/32", "10.0.0.2/32", "10.1.0.5/32", "fd00::2/128"},
			excludedDNS: []string{""},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := catest.NewPKI(t, tc.opts)
			inter := readCert(t, d.IntermediateCert())
			if !nameConstraintsCritical(t, inter) {
				t.Error("the intermediate's name constraints are not critical")
			}
			if !slices.Equal(inter.PermittedURIDomains, []string{catest.TrustDomain}) {
				t.Errorf("permitted URI domains %q; want only the trust domain", inter.PermittedURIDomains)
			}
			if got := inter.PermittedDNSDomains; !slices.Equal(got, tc.dns) {
				t.Errorf("permitted DNS domains %q; want %q", got, tc.dns)
			}
			if got := ipNets(inter.PermittedIPRanges); !slices.Equal(got, tc.ips) {
				t.Errorf("permitted IP ranges %q; want %q", got, tc.ips)
			}
			if got := inter.ExcludedDNSDomains; !slices.Equal(got, tc.excludedDNS) {
				t.Errorf("excluded DNS domains %q; want %q", got, tc.excludedDNS)
			}
			if got := ipNets(inter.ExcludedIPRanges); !slices.Equal(got, tc.exclIPs) {
				t.Errorf("excluded IP ranges %q; want %q", got, tc.exclIPs)
			}
		})
	}
}

// A certificate the intermediate signs for a name outside its constraints
// (what a misused or stolen intermediate key could mint) verifies neither
// with Go's verifier (the project's own, pki.TrustBundle) nor with
// `openssl verify`; inside them it does.
func TestIntermediateIsNameConstrained(t *testing.T) {
	openssl := testenv.Tool(t, "openssl", "install Debian's openssl")
	d := catest.Shared(t).Deployment // hosts localhost, 127.0.0.1
	key, err := pemutil.ParseKey(mustRead(t, d.IntermediateKey()), pemutil.WithPassword(catest.Password))
	if err != nil {
		t.Fatal(err)
	}
	inter := readCert(t, d.IntermediateCert())
	bundle, err := pki.LoadTrustBundle(d.RootCert())
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	interFile := filepath.Join(dir, "intermediate.pem")
	if err := os.WriteFile(interFile, mustRead(t, d.IntermediateCert()), 0o600); err != nil {
		t.Fatal(err)
	}
	core := "spiffe://fleet.test/core/core"
	for _, tc := range []struct {
		name string
		uri  string
		dns  []string
		ips  []string
		ok   bool
	}{
		{name: "device of the trust domain", uri: "spiffe://fleet.test/device/1a2b3c4d5e", ok: true},
		{name: "core on the hosts given to init", uri: core, dns: []string{"localhost"}, ips: []string{"127.0.0.1"}, ok: true},
		{name: "another trust domain", uri: "spiffe://other.test/device/1a2b3c4d5e"},
		{name: "core on an arbitrary DNS name", uri: core, dns: []string{"localhost", "evil.example.com"}},
		{name: "core on an arbitrary IPv4 address", uri: core, ips: []string{"10.9.9.9"}},
		{name: "core on an arbitrary IPv6 address", uri: core, ips: []string{"fd00::9"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id, err := pki.ParseIdentity(tc.uri)
			if err != nil {
				t.Fatal(err)
			}
			u, err := url.Parse(tc.uri)
			if err != nil {
				t.Fatal(err)
			}
			tmpl := &x509.Certificate{
				SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: id.CommonName()},
				NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
				KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth},
				URIs: []*url.URL{u}, DNSNames: tc.dns,
			}
			for _, ip := range tc.ips {
				tmpl.IPAddresses = append(tmpl.IPAddresses, net.ParseIP(ip))
			}
			leafKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
			if err != nil {
				t.Fatal(err)
			}
			der, err := x509.CreateCertificate(rand.Reader, tmpl, inter, &leafKey.PublicKey, key)
			if err != nil {
				t.Fatal(err)
			}
			leaf, err := x509.ParseCertificate(der)
			if err != nil {
				t.Fatal(err)
			}
			_, err = bundle.Verify([]*x509.Certificate{leaf, inter}, pki.VerifyOptions{KeyUsage: x509.ExtKeyUsageClientAuth})
			var inv x509.CertificateInvalidError
			outside := errors.Is(err, pki.ErrUntrusted) && errors.As(err, &inv) && inv.Reason == x509.CANotAuthorizedForThisName
			switch {
			case tc.ok && err != nil:
				t.Errorf("Go: refused: %v", err)
			case !tc.ok && !outside:
				t.Errorf("Go: %v; want refused as outside the name constraints", err)
			}
			leafFile := filepath.Join(dir, "leaf.pem")
			if err := os.WriteFile(leafFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
				t.Fatal(err)
			}
			out, err := exec.Command(openssl, "verify", "-CAfile", d.RootCert(), "-untrusted", interFile, leafFile).CombinedOutput() //nolint:gosec // a test tool
			switch {
			case tc.ok && err != nil:
				t.Errorf("openssl verify: refused: %v\n%s", err, out)
			case !tc.ok && (err == nil || !strings.Contains(string(out), "subtree violation")):
				t.Errorf("openssl verify: %v; want a subtree violation:\n%s", err, out)
			}
		})
	}
}

// Finding 6 as found: the admin provisioner issued core a certificate for
// an arbitrary DNS name, and it verified. Against the real step-ca binary,
// a core or proxy certificate for a host outside the constraints is now
// refused by the CA itself (step-ca applies its intermediate's
// constraints when it signs).
func TestOutsideNamesCannotBeIssued(t *testing.T) {
	bin := catest.Binary(t)
	c := catest.RunBinary(t, bin, catest.NewPKI(t))
	admin, err := c.AdminProvisioner(catest.Password)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, tc := range []struct {
		role  pki.Role
		name  string
		hosts []string
		ok    bool
	}{
		{pki.RoleCore, "core2", []string{"localhost", "127.0.0.1"}, true},
		{pki.RoleCore, "core3", []string{"evil.example.com"}, false},
		{pki.RoleCore, "core4", []string{"localhost", "10.9.9.9"}, false},
		{pki.RoleProxy, catest.Proxy, []string{"proxy.evil.example.com"}, false},
	} {
		_, err := c.IssueIdentity(ctx, c.Client, admin, deployment.IdentityRequest{Role: tc.role, Name: tc.name, Hosts: tc.hosts, Replace: true}, time.Now())
		var refusal *stepca.Error
		forbidden := errors.As(err, &refusal) && refusal.Status == http.StatusForbidden
		switch {
		case tc.ok && err != nil:
			t.Errorf("%s/%s on %v: %v", tc.role, tc.name, tc.hosts, err)
		case !tc.ok && !forbidden:
			t.Errorf("%s/%s on %v: %v; want step-ca's refusal (HTTP 403)", tc.role, tc.name, tc.hosts, err)
		case !tc.ok:
			t.Logf("%s/%s on %v refused: %v", tc.role, tc.name, tc.hosts, err)
		}
	}
}

// nameConstraintsCritical reports whether cert's name constraints
// extension (2.5.29.30) is marked critical.
func nameConstraintsCritical(t *testing.T, cert *x509.Certificate) bool {
	t.Helper()
	for _, e := range cert.Extensions {
		if e.Id.Equal(asn1.ObjectIdentifier{2, 5, 29, 30}) {
			return e.Critical
		}
	}
	t.Fatal("no name constraints extension")
	return false
}

func ipNets(nets []*net.IPNet) []string {
	var out []string
	for _, n := range nets {
		out = append(out, n.String())
	}
	return out
}
