package pki_test

import (
	"crypto/x509"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/fleetprov/prov/pki"
	"github.com/fleetprov/prov/pki/pkitest"
)

func TestParseTrustBundle(t *testing.T) {
	ca := pkitest.NewCA(t, "fleet.test")
	other := pkitest.NewCA(t, "other.test")
	second := pkitest.NewCA(t, "fleet.test")
	keyDER, err := x509.MarshalPKCS8PrivateKey(ca.RootKey)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		data []byte
		ok   bool
	}{
		{"one root", ca.RootPEM, true},
		{"two roots of one trust domain (rotation)", append(append([]byte{}, ca.RootPEM...), second.RootPEM...), true},
		{"empty", nil, false},
		{"not PEM", []byte("hello"), false},
		{"trailing garbage", append(append([]byte{}, ca.RootPEM...), "garbage"...), false},
		{"intermediate, not self-signed", pkitest.PEM(ca.Inter), false},
		{"a leaf", pkitest.PEM(must(ca.Leaf(t, pkitest.LeafSpec{URIs: []string{"spiffe://fleet.test/core/a"}}))), false},
		{"roots of two trust domains", append(append([]byte{}, ca.RootPEM...), other.RootPEM...), false},
		{"a private key", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), false},
		{"root without trust domain", pkitest.PEM(pkitest.Sign(t, &x509.Certificate{NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour),
			BasicConstraintsValid: true, IsCA: true, KeyUsage: x509.KeyUsageCertSign}, nil, &ca.RootKey.PublicKey, ca.RootKey)), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, err := pki.ParseTrustBundle(tc.data)
			if tc.ok != (err == nil) {
				t.Fatalf("ParseTrustBundle: %v; want ok=%v", err, tc.ok)
			}
			if err != nil && !errors.Is(err, pki.ErrBadTrustBundle) {
				t.Errorf("error %v is not ErrBadTrustBundle", err)
			}
			if err == nil && b.TrustDomain() != "fleet.test" {
				t.Errorf("trust domain %q", b.TrustDomain())
			}
		})
	}
	if _, err := pki.LoadTrustBundle(filepath.Join(t.TempDir(), "missing.crt")); !errors.Is(err, pki.ErrBadTrustBundle) || !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
}

func must[T any, U any](v T, _ U) T { return v }

// twoCAs are a deployment's CA with its trust bundle, and another CA of
// the same trust domain under another root.
func twoCAs(t *testing.T) (ca, other *pkitest.CA, bundle *pki.TrustBundle) {
	t.Helper()
	ca, other = pkitest.NewCA(t, "fleet.test"), pkitest.NewCA(t, "fleet.test")
	bundle, err := pki.ParseTrustBundle(ca.RootPEM)
	if err != nil {
		t.Fatal(err)
	}
	return ca, other, bundle
}

func TestVerify(t *testing.T) {
	ca, other, bundle := twoCAs(t)
	dev := "spiffe://fleet.test/device/1a2b3c4d5e"
	now := time.Now()
	epoch := time.Unix(0, 0) // a board without RTC
	for _, tc := range []struct {
		name  string
		chain func() []*x509.Certificate
		opts  pki.VerifyOptions
		err   error
	}{
		{"device", chainOf(t, ca, pkitest.LeafSpec{URIs: []string{dev}}), pki.VerifyOptions{KeyUsage: x509.ExtKeyUsageClientAuth}, nil},
		{"role allowed", chainOf(t, ca, pkitest.LeafSpec{URIs: []string{dev}}), pki.VerifyOptions{KeyUsage: x509.ExtKeyUsageClientAuth, Roles: []pki.Role{pki.RoleDevice}}, nil},
		{"role not allowed", chainOf(t, ca, pkitest.LeafSpec{URIs: []string{dev}}), pki.VerifyOptions{KeyUsage: x509.ExtKeyUsageClientAuth, Roles: []pki.Role{pki.RoleAdmin}}, pki.ErrRoleNotAllowed},
		{"other root", chainOf(t, other, pkitest.LeafSpec{URIs: []string{dev}}), pki.VerifyOptions{KeyUsage: x509.ExtKeyUsageClientAuth}, pki.ErrUntrusted},
		{"leaf without intermediate", func() []*x509.Certificate { return chainOf(t, ca, pkitest.LeafSpec{URIs: []string{dev}})()[:1] }, pki.VerifyOptions{KeyUsage: x509.ExtKeyUsageClientAuth}, pki.ErrUntrusted},
		{"empty chain", func() []*x509.Certificate { return nil }, pki.VerifyOptions{}, pki.ErrUntrusted},
		{"expired", chainOf(t, ca, pkitest.LeafSpec{URIs: []string{dev}, NotBefore: now.Add(-2 * time.Hour), NotAfter: now.Add(-time.Hour)}), pki.VerifyOptions{KeyUsage: x509.ExtKeyUsageClientAuth}, pki.ErrExpired},
		{"not yet valid", chainOf(t, ca, pkitest.LeafSpec{URIs: []string{dev}, NotBefore: now.Add(time.Hour), NotAfter: now.Add(2 * time.Hour)}), pki.VerifyOptions{KeyUsage: x509.ExtKeyUsageClientAuth}, pki.ErrExpired},
		{"wrong key usage", chainOf(t, ca, pkitest.LeafSpec{URIs: []string{dev}, EKU: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}), pki.VerifyOptions{KeyUsage: x509.ExtKeyUsageClientAuth}, pki.ErrKeyUsage},
		{"foreign trust domain under our root", chainOf(t, ca, pkitest.LeafSpec{URIs: []string{"spiffe://other.test/device/1a2b3c4d5e"}}), pki.VerifyOptions{KeyUsage: x509.ExtKeyUsageClientAuth}, pki.ErrForeignTrustDomain},
		{"ambiguous", chainOf(t, ca, pkitest.LeafSpec{CN: "0000000000", URIs: []string{dev}}), pki.VerifyOptions{KeyUsage: x509.ExtKeyUsageClientAuth}, pki.ErrAmbiguousIdentity},
		// Clock floor: a board in 1970 verifies at the floor...
		{"clock in 1970, floor now", chainOf(t, ca, pkitest.LeafSpec{URIs: []string{dev}}), pki.VerifyOptions{Time: epoch, Floor: pki.NewFloor(now, nil), KeyUsage: x509.ExtKeyUsageClientAuth}, nil},
		{"clock in 1970, no floor", chainOf(t, ca, pkitest.LeafSpec{URIs: []string{dev}}), pki.VerifyOptions{Time: epoch, KeyUsage: x509.ExtKeyUsageClientAuth}, pki.ErrExpired},
		// ...and never accepts what expired before the floor.
		{"clock in 1970, expired before floor", chainOf(t, ca, pkitest.LeafSpec{URIs: []string{dev}, NotBefore: now.Add(-2 * time.Hour), NotAfter: now.Add(-time.Hour)}), pki.VerifyOptions{Time: epoch, Floor: pki.NewFloor(now, nil), KeyUsage: x509.ExtKeyUsageClientAuth}, pki.ErrExpired},
		{"floor in the past does not hide expiry", chainOf(t, ca, pkitest.LeafSpec{URIs: []string{dev}, NotBefore: now.Add(-2 * time.Hour), NotAfter: now.Add(-time.Hour)}), pki.VerifyOptions{Floor: pki.NewFloor(now.Add(-90*time.Minute), nil), KeyUsage: x509.ExtKeyUsageClientAuth}, pki.ErrExpired},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id, err := bundle.Verify(tc.chain(), tc.opts)
			if !errors.Is(err, tc.err) {
				t.Fatalf("Verify: %v, %v; want %v", id, err, tc.err)
			}
		})
	}
}

func chainOf(t *testing.T, ca *pkitest.CA, s pkitest.LeafSpec) func() []*x509.Certificate {
	return func() []*x509.Certificate {
		leaf, _ := ca.Leaf(t, s)
		return []*x509.Certificate{leaf, ca.Inter}
	}
}

func TestReadPasswordFile(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		pkitest.WriteFile(t, p, []byte(content), 0o600)
		return p
	}
	if pw, err := pki.ReadPasswordFile(write("ok", "s3cret pass\n\n")); err != nil || string(pw) != "s3cret pass" {
		t.Errorf("got %q, %v", pw, err)
	}
	for name, path := range map[string]string{
		"missing":     filepath.Join(dir, "nope"),
		"empty":       write("empty", ""),
		"white space": write("ws", " \n\t\n"),
		"no path":     "",
		"too long":    write("long", string(make([]byte, 5000))),
	} {
		if _, err := pki.ReadPasswordFile(path); !errors.Is(err, pki.ErrBadPasswordFile) {
			t.Errorf("%s: %v; want ErrBadPasswordFile", name, err)
		}
	}
}

// A chain verified once is answered from memory inside its validity window
// only: the same chain is still refused after it expires, for another key
// usage or role, and a chain that differs in one byte is verified afresh.
func TestVerifyRemembersOnlyWhatHolds(t *testing.T) {
	ca := pkitest.NewCA(t, "fleet.test")
	bundle, err := pki.ParseTrustBundle(ca.RootPEM)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	leaf, _ := ca.Leaf(t, pkitest.LeafSpec{URIs: []string{"spiffe://fleet.test/device/1a2b3c4d5e"}, EKU: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		NotBefore: now.Add(-time.Minute), NotAfter: now.Add(time.Hour)})
	chain := []*x509.Certificate{leaf, ca.Inter}
	client := pki.VerifyOptions{Time: now, KeyUsage: x509.ExtKeyUsageClientAuth}
	for range 2 {
		if id, err := bundle.Verify(chain, client); err != nil || id.Name != "1a2b3c4d5e" {
			t.Fatalf("Verify: %v %v", id, err)
		}
	}
	for name, tc := range map[string]struct {
		opts pki.VerifyOptions
		err  error
	}{
		"after expiry":    {pki.VerifyOptions{Time: now.Add(2 * time.Hour), KeyUsage: x509.ExtKeyUsageClientAuth}, pki.ErrExpired},
		"before validity": {pki.VerifyOptions{Time: now.Add(-time.Hour), KeyUsage: x509.ExtKeyUsageClientAuth}, pki.ErrExpired},
		"other usage":     {pki.VerifyOptions{Time: now, KeyUsage: x509.ExtKeyUsageServerAuth}, pki.ErrKeyUsage},
		"other role":      {pki.VerifyOptions{Time: now, KeyUsage: x509.ExtKeyUsageClientAuth, Roles: []pki.Role{pki.RoleAdmin}}, pki.ErrRoleNotAllowed},
	} {
		if _, err := bundle.Verify(chain, tc.opts); !errors.Is(err, tc.err) {
			t.Errorf("%s: %v, want %v", name, err, tc.err)
		}
	}
	// The same leaf with its signature changed is not the remembered chain.
	forged := *leaf
	forged.Raw = append([]byte{}, leaf.Raw...)
	forged.Raw[len(forged.Raw)-1] ^= 1
	bad, err := x509.ParseCertificate(forged.Raw)
	if err != nil {
		t.Skipf("flipped byte broke the DER: %v", err)
	}
	if _, err := bundle.Verify([]*x509.Certificate{bad, ca.Inter}, client); !errors.Is(err, pki.ErrUntrusted) {
		t.Fatalf("forged signature: %v", err)
	}
}
