// Package pkitest makes small certificate authorities with the standard
// library, for tests of code that checks certificates (identities, chains,
// TLS, signed images) without starting step-ca, and a Recorder to put in a
// server's place. The deployment's real PKI is tested in pki/deployment.
package pkitest

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"
)

// CA is a root (naming its trust domain) and an intermediate.
type CA struct {
	Root, Inter       *x509.Certificate
	RootKey, InterKey *ecdsa.PrivateKey
	RootPEM           []byte
}

// NewCA makes a CA for trustDomain.
func NewCA(t testing.TB, trustDomain string) *CA {
	t.Helper()
	c := &CA{RootKey: newKey(t), InterKey: newKey(t)}
	now := time.Now()
	c.Root = Sign(t, &x509.Certificate{
		Subject:   pkix.Name{CommonName: trustDomain + " root"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(10 * 365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true, IsCA: true,
		URIs: []*url.URL{{Scheme: "spiffe", Host: trustDomain}},
	}, nil, &c.RootKey.PublicKey, c.RootKey)
	c.Inter = Sign(t, &x509.Certificate{
		Subject:   pkix.Name{CommonName: trustDomain + " intermediate"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(5 * 365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true, IsCA: true, MaxPathLenZero: true,
	}, c.Root, &c.InterKey.PublicKey, c.RootKey)
	c.RootPEM = PEM(c.Root)
	return c
}

// LeafSpec describes a leaf; zero fields get sensible values (valid from a
// minute ago for an hour, client and server auth, an ECDSA P-256 key).
type LeafSpec struct {
	CN        string
	URIs      []string
	DNS       []string
	IPs       []string
	Emails    []string
	EKU       []x509.ExtKeyUsage
	NotBefore time.Time
	NotAfter  time.Time
	Ed25519   bool
}

// Leaf issues a leaf from the intermediate.
func (c *CA) Leaf(t testing.TB, s LeafSpec) (*x509.Certificate, crypto.Signer) {
	t.Helper()
	var key crypto.Signer = newKey(t)
	if s.Ed25519 {
		_, k, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		key = k
	}
	tmpl := &x509.Certificate{
		Subject:     pkix.Name{CommonName: s.CN},
		NotBefore:   s.NotBefore,
		NotAfter:    s.NotAfter,
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: s.EKU,
		DNSNames:    s.DNS, EmailAddresses: s.Emails,
	}
	if tmpl.NotBefore.IsZero() {
		tmpl.NotBefore = time.Now().Add(-time.Minute)
	}
	if tmpl.NotAfter.IsZero() {
		tmpl.NotAfter = time.Now().Add(time.Hour)
	}
	if tmpl.ExtKeyUsage == nil {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth}
	}
	for _, u := range s.URIs {
		pu, err := url.Parse(u)
		if err != nil {
			t.Fatal(err)
		}
		tmpl.URIs = append(tmpl.URIs, pu)
	}
	for _, ip := range s.IPs {
		tmpl.IPAddresses = append(tmpl.IPAddresses, net.ParseIP(ip))
	}
	return Sign(t, tmpl, c.Inter, key.Public(), c.InterKey), key
}

// KeyPair writes a leaf's chain and key (PKCS#8, mode 0600) to files and
// returns their paths.
func (c *CA) KeyPair(t testing.TB, s LeafSpec) (certFile, keyFile string) {
	t.Helper()
	leaf, key := c.Leaf(t, s)
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	WriteFile(t, certFile, PEM(leaf, c.Inter), 0o644)
	WriteFile(t, keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600)
	return certFile, keyFile
}

// TLSCert issues a leaf as a tls.Certificate with its chain.
func (c *CA) TLSCert(t testing.TB, s LeafSpec) tls.Certificate {
	t.Helper()
	leaf, key := c.Leaf(t, s)
	return tls.Certificate{Certificate: [][]byte{leaf.Raw, c.Inter.Raw}, PrivateKey: key, Leaf: leaf}
}

func newKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

var serialCounter atomic.Int64

// Sign creates a certificate (self-signed when parent is nil).
func Sign(t testing.TB, tmpl, parent *x509.Certificate, pub, priv any) *x509.Certificate {
	t.Helper()
	tmpl.SerialNumber = big.NewInt(serialCounter.Add(1))
	if parent == nil {
		parent = tmpl
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, priv)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// PEM encodes certificates.
func PEM(certs ...*x509.Certificate) []byte {
	var out []byte
	for _, c := range certs {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	return out
}

// WriteFile writes a file with exactly mode.
func WriteFile(t testing.TB, path string, data []byte, mode os.FileMode) {
	t.Helper()
	if err := os.WriteFile(path, data, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
}
