package deployment_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"go.step.sm/crypto/jose"

	"github.com/fleetprov/prov/internal/testenv/pgtest"
	"github.com/fleetprov/prov/pki"
	"github.com/fleetprov/prov/pki/ca/catest"
	"github.com/fleetprov/prov/pki/deployment"
	"github.com/fleetprov/prov/pki/stepca"
	"github.com/fleetprov/prov/pki/token"
)

const serialA, serialB = "1a2b3c4d5e", "0f0e0d0c0b"

func deviceCSR(t *testing.T, tmpl *x509.CertificateRequest) (*ecdsa.PrivateKey, *x509.CertificateRequest) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	if tmpl == nil {
		tmpl = &x509.CertificateRequest{}
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		t.Fatal(err)
	}
	return key, csr
}

func deviceURI(td, serial string) string { return "spiffe://" + td + "/device/" + serial }

// proxyToken mints a token the way a proxy does.
func proxyToken(t *testing.T, c *catest.CA, serial string, csr *x509.CertificateRequest) string {
	t.Helper()
	return proxyTokenWith(t, proxyProvisioner(t, c), c, serial, csr)
}

// proxyProvisioner is the proxy's provisioner, its key decrypted from the
// PKI's files (a 600,000-round key derivation: over a second under the
// race detector), as a proxy loads it once at its start.
func proxyProvisioner(t *testing.T, c *catest.CA) *token.Provisioner {
	t.Helper()
	p, err := c.ProxyProvisioner(catest.Proxy)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// proxyTokenWith is proxyToken with the provisioner already loaded.
func proxyTokenWith(t *testing.T, p *token.Provisioner, c *catest.CA, serial string, csr *x509.CertificateRequest) string {
	t.Helper()
	tok, err := p.SignToken(token.SignRequest{
		Audience: c.Client.SignAudience(),
		Subject:  serial,
		SANs:     []string{deviceURI(catest.TrustDomain, serial)},
		CSR:      csr,
	}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// forgedToken signs arbitrary claims with the proxy's real provisioner key:
// what an attacker holding a stolen proxy key can send.
func forgedToken(t *testing.T, c *catest.CA, claims map[string]any) string {
	t.Helper()
	return forgedTokenWith(t, proxyKey(t, c), c, claims)
}

// proxyKey is the proxy's provisioner key, decrypted (over a second under
// the race detector: load it once for many tokens).
func proxyKey(t *testing.T, c *catest.CA) *jose.JSONWebKey {
	t.Helper()
	jwe, err := os.ReadFile(c.ProxyProvisionerKey(catest.Proxy))
	if err != nil {
		t.Fatal(err)
	}
	pw, err := pki.ReadPasswordFile(c.ProxyProvisionerPassword(catest.Proxy))
	if err != nil {
		t.Fatal(err)
	}
	plain, err := jose.Decrypt(jwe, jose.WithPassword(pw))
	if err != nil {
		t.Fatal(err)
	}
	var k jose.JSONWebKey
	if err := json.Unmarshal(plain, &k); err != nil {
		t.Fatal(err)
	}
	return &k
}

// forgedTokenWith is forgedToken with the key already loaded.
func forgedTokenWith(t *testing.T, k *jose.JSONWebKey, c *catest.CA, claims map[string]any) string {
	t.Helper()
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: k.Key},
		new(jose.SignerOptions).WithType("JWT").WithHeader("kid", k.KeyID))
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	base := map[string]any{
		"iss": stepca.ProxyProvisionerName(catest.Proxy),
		"aud": c.Client.SignAudience(),
		"iat": now.Unix(), "nbf": now.Unix(), "exp": now.Add(time.Minute).Unix(),
		"jti": randomHex(t),
	}
	for k, v := range claims {
		if v == nil {
			delete(base, k)
		} else {
			base[k] = v
		}
	}
	tok, err := jose.Signed(s).Claims(base).CompactSerialize()
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func randomHex(t *testing.T) string {
	t.Helper()
	b := make([]byte, 16)
	if _, err := io.ReadFull(rand.Reader, b); err != nil {
		t.Fatal(err)
	}
	return base64.RawURLEncoding.EncodeToString(b)
}

func cnfOf(csr *x509.CertificateRequest) map[string]any {
	sum := sha256.Sum256(csr.Raw)
	return map[string]any{"x5rt#S256": base64.RawURLEncoding.EncodeToString(sum[:])}
}

func TestMain(m *testing.M) { os.Exit(pgtest.After(catest.Main(m))) }

func TestDeviceTokenGetsExactlyTheDeviceIdentity(t *testing.T) {
	c := catest.Shared(t)
	ctx := context.Background()
	key, csr := deviceCSR(t, nil)
	chain, err := c.Client.Sign(ctx, csr, proxyToken(t, c, serialA, csr))
	if err != nil {
		t.Fatalf("sign: %v", err)
	}
	leaf := chain[0]
	bundle, err := pki.LoadTrustBundle(c.RootCert())
	if err != nil {
		t.Fatal(err)
	}
	id, err := bundle.Verify(chain, pki.VerifyOptions{KeyUsage: x509.ExtKeyUsageClientAuth, Roles: []pki.Role{pki.RoleDevice}})
	if err != nil {
		t.Fatalf("verify device certificate: %v", err)
	}
	if id.Name != serialA || leaf.Subject.CommonName != serialA {
		t.Errorf("identity %v, CN %q; want serial %s", id, leaf.Subject.CommonName, serialA)
	}
	if len(leaf.URIs) != 1 || len(leaf.DNSNames)+len(leaf.IPAddresses)+len(leaf.EmailAddresses) != 0 {
		t.Errorf("SANs: URIs %v DNS %v IPs %v emails %v; want only the device URI", leaf.URIs, leaf.DNSNames, leaf.IPAddresses, leaf.EmailAddresses)
	}
	if !slices.Equal(leaf.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}) || leaf.IsCA {
		t.Errorf("EKU %v, IsCA %v; want clientAuth only, not a CA", leaf.ExtKeyUsage, leaf.IsCA)
	}
	if got := leaf.NotAfter.Sub(leaf.NotBefore); got < 24*time.Hour || got > 24*time.Hour+2*time.Minute {
		t.Errorf("lifetime %s; want the 24h default (plus backdate)", got)
	}
	if !key.PublicKey.Equal(leaf.PublicKey) {
		t.Error("certificate key is not the CSR's key")
	}
}

func TestDeviceTokenRefusals(t *testing.T) {
	c := catest.Shared(t)
	ctx := context.Background()
	td := catest.TrustDomain
	// Loaded once for the sixteen tokens below; each token is new.
	prov, key := proxyProvisioner(t, c), proxyKey(t, c)
	proxyToken := func(t *testing.T, _ *catest.CA, serial string, csr *x509.CertificateRequest) string {
		t.Helper()
		return proxyTokenWith(t, prov, c, serial, csr)
	}
	forgedToken := func(t *testing.T, _ *catest.CA, claims map[string]any) string {
		t.Helper()
		return forgedTokenWith(t, key, c, claims)
	}

	t.Run("replayed token", func(t *testing.T) {
		_, csr := deviceCSR(t, nil)
		tok := proxyToken(t, c, serialA, csr)
		if _, err := c.Client.Sign(ctx, csr, tok); err != nil {
			t.Fatalf("first use: %v", err)
		}
		_, err := c.Client.Sign(ctx, csr, tok)
		if err == nil {
			t.Fatal("second use of one token was accepted")
		}
		t.Logf("refused: %v", err)
	})
	t.Run("token for another key", func(t *testing.T) {
		_, bound := deviceCSR(t, nil)
		_, other := deviceCSR(t, nil)
		_, err := c.Client.Sign(ctx, other, proxyToken(t, c, serialA, bound))
		if err == nil {
			t.Fatal("a token bound to one CSR signed another")
		}
		t.Logf("refused: %v", err)
	})
	t.Run("token for another serial", func(t *testing.T) {
		_, csr := deviceCSR(t, &x509.CertificateRequest{Subject: pkix.Name{CommonName: serialB}})
		if _, err := c.Client.Sign(ctx, csr, proxyToken(t, c, serialA, csr)); err == nil {
			t.Fatal("a token for serial A signed a CSR asking for serial B")
		}
		u, _ := url.Parse(deviceURI(td, serialB))
		_, csr = deviceCSR(t, &x509.CertificateRequest{URIs: []*url.URL{u}})
		if _, err := c.Client.Sign(ctx, csr, proxyToken(t, c, serialA, csr)); err == nil {
			t.Fatal("a token for serial A signed a CSR with B's identity URI")
		}
	})

	// Validly signed with the proxy's key, asking for what a proxy must not get.
	_, csr := deviceCSR(t, nil)
	cnf := cnfOf(csr)
	for _, tc := range []struct {
		name   string
		claims map[string]any
	}{
		{"admin identity", map[string]any{"sub": "admin/eve", "sans": []string{"spiffe://" + td + "/admin/eve"}, "cnf": cnf}},
		{"proxy identity", map[string]any{"sub": "proxy/evil", "sans": []string{"spiffe://" + td + "/proxy/evil"}, "cnf": cnf}},
		{"core identity with serial subject", map[string]any{"sub": serialA, "sans": []string{"spiffe://" + td + "/core/core"}, "cnf": cnf}},
		{"another trust domain", map[string]any{"sub": serialA, "sans": []string{deviceURI("other.test", serialA)}, "cnf": cnf}},
		{"extra DNS name", map[string]any{"sub": serialA, "sans": []string{deviceURI(td, serialA), "core.example.com"}, "cnf": cnf}},
		{"no SANs (subject only)", map[string]any{"sub": serialA, "cnf": cnf}},
		{"upper-case serial", map[string]any{"sub": "1A2B3C4D5E", "sans": []string{deviceURI(td, "1A2B3C4D5E")}, "cnf": cnf}},
		{"not bound to a CSR", map[string]any{"sub": serialA, "sans": []string{deviceURI(td, serialA)}}},
		{"empty CSR binding", map[string]any{"sub": serialA, "sans": []string{deviceURI(td, serialA)}, "cnf": map[string]any{}}},
		{"another audience", map[string]any{"sub": serialA, "sans": []string{deviceURI(td, serialA)}, "cnf": cnf, "aud": "https://ca.elsewhere.example/1.0/sign"}},
		{"expired", map[string]any{"sub": serialA, "sans": []string{deviceURI(td, serialA)}, "cnf": cnf,
			"iat": time.Now().Unix(), "nbf": time.Now().Add(-time.Hour).Unix(), "exp": time.Now().Add(-2 * time.Minute).Unix()}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			chain, err := c.Client.Sign(ctx, csr, forgedToken(t, c, tc.claims))
			if err == nil {
				t.Fatalf("signed %v for a forged token", chain[0].URIs)
			}
			t.Logf("refused: %v", err)
		})
	}
	t.Run("control: the same forging helper with honest claims works", func(t *testing.T) {
		if _, err := c.Client.Sign(ctx, csr, forgedToken(t, c, map[string]any{"sub": serialA, "sans": []string{deviceURI(td, serialA)}, "cnf": cnf})); err != nil {
			t.Fatalf("honest token refused, so the refusals above prove nothing: %v", err)
		}
	})
}

func TestAdminProvisionerSignsServiceIdentitiesOnly(t *testing.T) {
	c := catest.Shared(t)
	ctx := context.Background()
	admin, err := c.AdminProvisioner(catest.Password)
	if err != nil {
		t.Fatal(err)
	}
	_, csr := deviceCSR(t, nil)
	tok, err := admin.SignToken(token.SignRequest{Audience: c.Client.SignAudience(), Subject: serialA,
		SANs: []string{deviceURI(catest.TrustDomain, serialA)}, CSR: csr}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Client.Sign(ctx, csr, tok); err == nil {
		t.Fatal("the admin provisioner signed a device identity")
	}
	out, err := c.IssueIdentity(ctx, c.Client, admin, deployment.IdentityRequest{Role: pki.RoleCore, Name: "core2", Hosts: []string{"localhost", "127.0.0.1"}, Replace: true}, time.Now())
	if err != nil {
		t.Fatalf("issue core2: %v", err)
	}
	if !slices.Equal(out.Leaf.DNSNames, []string{"localhost"}) || len(out.Leaf.IPAddresses) != 1 ||
		!slices.Contains(out.Leaf.ExtKeyUsage, x509.ExtKeyUsageServerAuth) {
		t.Errorf("core2 certificate: DNS %v IPs %v EKU %v", out.Leaf.DNSNames, out.Leaf.IPAddresses, out.Leaf.ExtKeyUsage)
	}
}

func TestRenewalAndRevocation(t *testing.T) {
	c := catest.Shared(t)
	ctx := context.Background()
	key, csr := deviceCSR(t, nil)
	chain, err := c.Client.Sign(ctx, csr, proxyToken(t, c, serialA, csr))
	if err != nil {
		t.Fatal(err)
	}
	bundle, err := pki.LoadTrustBundle(c.RootCert())
	if err != nil {
		t.Fatal(err)
	}
	renew := func() (*http.Response, error) {
		cert := tls.Certificate{PrivateKey: key, Leaf: chain[0]}
		for _, c := range chain {
			cert.Certificate = append(cert.Certificate, c.Raw)
		}
		cl := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{
			MinVersion: tls.VersionTLS13, RootCAs: bundle.Pool(), Certificates: []tls.Certificate{cert},
		}}}
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.CAURL+"/1.0/renew", nil)
		if err != nil {
			t.Fatal(err)
		}
		return cl.Do(req)
	}
	resp, err := renew()
	if err != nil {
		t.Fatal(err)
	}
	var body struct {
		Crt string `json:"crt"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("renew: HTTP %d", resp.StatusCode)
	}
	renewed, err := pki.ParseCertificates([]byte(body.Crt))
	if err != nil {
		t.Fatal(err)
	}
	if id, err := pki.IdentityOf(renewed[0]); err != nil || id.Name != serialA || renewed[0].SerialNumber.Cmp(chain[0].SerialNumber) == 0 {
		t.Fatalf("renewed certificate: %v %v", id, err)
	}

	// Revoke the original with the admin provisioner, as prov-pki revoke does.
	c.Revoke(t, chain[0], "test")
	resp, err = renew()
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	if resp.StatusCode < 400 {
		t.Fatalf("renewal of a revoked certificate: HTTP %d", resp.StatusCode)
	}
	crl := fetchCRL(t, c, bundle)
	found := false
	for _, e := range crl.RevokedCertificateEntries {
		found = found || e.SerialNumber.Cmp(chain[0].SerialNumber) == 0
	}
	if !found {
		t.Fatalf("CRL (%d entries) does not list revoked serial %s", len(crl.RevokedCertificateEntries), chain[0].SerialNumber)
	}
}

func fetchCRL(t *testing.T, c *catest.CA, bundle *pki.TrustBundle) *x509.RevocationList {
	t.Helper()
	cl := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: bundle.Pool()}}}
	resp, err := cl.Get(c.CAURL + "/1.0/crl")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	der, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("CRL: HTTP %d %v", resp.StatusCode, err)
	}
	crl, err := x509.ParseRevocationList(der)
	if err != nil {
		t.Fatalf("parse CRL: %v (%q)", err, strings.TrimSpace(string(der[:min(len(der), 200)])))
	}
	inter, err := pki.ParseCertificates(mustRead(t, c.IntermediateCert()))
	if err != nil {
		t.Fatal(err)
	}
	if err := crl.CheckSignatureFrom(inter[0]); err != nil {
		t.Fatalf("CRL signature: %v", err)
	}
	return crl
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// Core's revoker provisioner revokes, and signs nothing, whatever it asks.
func TestRevokerProvisionerOnlyRevokes(t *testing.T) {
	c := catest.Shared(t)
	ctx := context.Background()
	pw, err := pki.ReadPasswordFile(c.CoreRevokerPassword(deployment.DefaultCoreName))
	if err != nil {
		t.Fatal(err)
	}
	rev, err := token.Load(stepca.RevokerProvisionerName, c.CoreRevokerKey(deployment.DefaultCoreName), pw)
	if err != nil {
		t.Fatal(err)
	}
	_, csr := deviceCSR(t, nil)
	for _, sans := range [][]string{{deviceURI(catest.TrustDomain, serialB)}, {"spiffe://fleet.test/admin/eve"}} {
		tok, err := rev.SignToken(token.SignRequest{Audience: c.Client.SignAudience(), Subject: serialB, SANs: sans, CSR: csr}, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Client.Sign(ctx, csr, tok); err == nil {
			t.Fatalf("the revoker provisioner signed %v", sans)
		}
	}
	chain, err := c.Client.Sign(ctx, csr, proxyToken(t, c, serialB, csr))
	if err != nil {
		t.Fatal(err)
	}
	serial := chain[0].SerialNumber.String()
	tok, err := rev.RevokeToken(c.Client.RevokeAudience(), serial, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Client.Revoke(ctx, serial, tok, "device revoked at core"); err != nil {
		t.Fatalf("the revoker cannot revoke: %v", err)
	}
}
