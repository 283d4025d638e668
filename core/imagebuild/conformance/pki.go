package conformance

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"fmt"
	"math/big"
	"net/url"
	"time"
)

// The suite's fixed times: the signer is a 90-day certificate, as core's
// are, and the clock of most cases is a month into it.
var (
	rootFrom   = date(2026, 1, 1)
	rootTo     = date(2036, 1, 1)
	interTo    = date(2031, 1, 1)
	signerFrom = date(2026, 6, 1)
	signerTo   = date(2026, 8, 30)
	clock      = date(2026, 7, 1)
	issued     = date(2026, 7, 1)
)

func date(y int, m time.Month, d int) time.Time { return time.Date(y, m, d, 0, 0, 0, 0, time.UTC) }

// key is the Ed25519 key derived from a name: the same name, the same key,
// on every run (Ed25519 signing is deterministic too, so certificates and
// statements are the same bytes every time).
func key(name string) ed25519.PrivateKey {
	seed := sha256.Sum256([]byte("prov conformance suite key: " + name))
	return ed25519.NewKeyFromSeed(seed[:])
}

// ecdsaKey is a P-256 key derived from a name, for the one case of a
// signer whose key is not Ed25519 (only its public half is used).
func ecdsaKey(name string) (*ecdsa.PrivateKey, error) {
	d := sha256.Sum256([]byte("prov conformance suite ecdsa key: " + name))
	d[0] &= 0x7f // below the group order
	return ecdsa.ParseRawPrivateKey(elliptic.P256(), d[:])
}

var oidCommonName = asn1.ObjectIdentifier{2, 5, 4, 3}

// cert is a certificate to make.
type cert struct {
	name     string // serial number and key are derived from it
	subject  pkix.Name
	from, to time.Time
	ca       bool
	notCA    bool // basic constraints present, cA false, on an issuing certificate
	pathLen  int  // -1: none
	uris     []string
	dns      []string
	eku      []x509.ExtKeyUsage
	ku       x509.KeyUsage
	permit   []string // permitted URI domains (name constraints, critical)
	extra    []pkix.Extension
	pub      crypto.PublicKey // nil: the Ed25519 key of name
}

// make issues c from parent (nil: self-signed) with parentKey.
func (c cert) make(parent *x509.Certificate, parentKey ed25519.PrivateKey) (*x509.Certificate, error) {
	h := sha256.Sum256([]byte("prov conformance suite serial: " + c.name))
	tmpl := &x509.Certificate{
		SerialNumber: new(big.Int).SetBytes(h[:16]), Subject: c.subject, NotBefore: c.from, NotAfter: c.to,
		KeyUsage: c.ku, ExtKeyUsage: c.eku, DNSNames: c.dns, ExtraExtensions: c.extra,
	}
	if c.ca || c.notCA {
		tmpl.BasicConstraintsValid, tmpl.IsCA = true, c.ca
		if c.ca {
			tmpl.MaxPathLen, tmpl.MaxPathLenZero = c.pathLen, c.pathLen == 0
		}
	}
	if len(c.permit) > 0 {
		tmpl.PermittedURIDomains, tmpl.PermittedDNSDomainsCritical = c.permit, true
	}
	for _, u := range c.uris {
		pu, err := url.Parse(u)
		if err != nil {
			return nil, err
		}
		pu.Scheme = u[:len(pu.Scheme)] // url.Parse lower-cases it; keep it as written
		tmpl.URIs = append(tmpl.URIs, pu)
	}
	pub := c.pub
	if pub == nil {
		pub = key(c.name).Public()
	}
	if parent == nil {
		parent, parentKey = tmpl, key(c.name)
	}
	der, err := x509.CreateCertificate(nil, tmpl, parent, pub, parentKey)
	if err != nil {
		return nil, fmt.Errorf("certificate %s: %w", c.name, err)
	}
	return x509.ParseCertificate(der)
}

// pkiSet is the suite's PKI: the pinned root, the intermediate core's
// signer hangs from, the signer, and the odd certificates of the cases.
type pkiSet struct {
	root, inter, signer *x509.Certificate
	certs               map[string]*x509.Certificate
}

const trustDomain = "fleet.test"

func caSubject(cn string) pkix.Name {
	return pkix.Name{Organization: []string{"prov conformance"}, CommonName: cn}
}

// signerCert is the honest signer's certificate with changes.
func signerCert(name string, change func(*cert)) cert {
	c := cert{
		name: name, subject: pkix.Name{CommonName: "signer/images"}, from: signerFrom, to: signerTo, pathLen: -1,
		uris: []string{"spiffe://" + trustDomain + "/signer/images"}, eku: []x509.ExtKeyUsage{x509.ExtKeyUsageCodeSigning},
		ku: x509.KeyUsageDigitalSignature,
	}
	if change != nil {
		change(&c)
	}
	return c
}

func interCert(name string, change func(*cert)) cert {
	c := cert{
		name: name, subject: caSubject(trustDomain + " " + name), from: rootFrom, to: interTo, ca: true, pathLen: 0,
		ku: x509.KeyUsageCertSign | x509.KeyUsageCRLSign, permit: []string{trustDomain},
	}
	if change != nil {
		change(&c)
	}
	return c
}

func newPKI() (*pkiSet, error) {
	p := &pkiSet{certs: map[string]*x509.Certificate{}}
	var err error
	rootC := cert{name: "root", subject: caSubject(trustDomain + " root"), from: rootFrom, to: rootTo, ca: true, pathLen: 2,
		ku: x509.KeyUsageCertSign | x509.KeyUsageCRLSign, uris: []string{"spiffe://" + trustDomain}}
	if p.root, err = rootC.make(nil, nil); err != nil {
		return nil, err
	}
	p.certs["root"] = p.root
	otherRoot, err := cert{name: "other-root", subject: caSubject(trustDomain + " root"), from: rootFrom, to: rootTo, ca: true, pathLen: 1,
		ku: x509.KeyUsageCertSign, uris: []string{"spiffe://" + trustDomain}}.make(nil, nil)
	if err != nil {
		return nil, err
	}
	p.certs["other-root"] = otherRoot
	// Intermediates issued by the root.
	for _, c := range []cert{
		interCert("intermediate", nil),
		interCert("intermediate-open", func(c *cert) { c.permit = nil }),
		interCert("intermediate-other-domain", func(c *cert) { c.permit = []string{"other.test"} }),
		interCert("intermediate-not-ca", func(c *cert) { c.ca, c.notCA, c.pathLen = false, true, -1 }),
		interCert("intermediate-codesigning", func(c *cert) { c.eku = []x509.ExtKeyUsage{x509.ExtKeyUsageCodeSigning} }),
		interCert("intermediate-any-usage", func(c *cert) { c.eku = []x509.ExtKeyUsage{x509.ExtKeyUsageAny} }),
		interCert("intermediate-unlimited", func(c *cert) { c.pathLen = 1 }),
	} {
		if p.certs[c.name], err = c.make(p.root, key("root")); err != nil {
			return nil, err
		}
	}
	p.inter = p.certs["intermediate"]
	// One issued by the other root, under the same names as ours.
	if p.certs["other-intermediate"], err = interCert("other-intermediate", func(c *cert) { c.subject = caSubject(trustDomain + " intermediate") }).make(otherRoot, key("other-root")); err != nil {
		return nil, err
	}
	// A CA below the intermediate, whose path length allows none.
	if p.certs["sub-intermediate"], err = interCert("sub-intermediate", nil).make(p.inter, key("intermediate")); err != nil {
		return nil, err
	}
	if p.certs["sub-intermediate-allowed"], err = interCert("sub-intermediate-allowed", nil).make(p.certs["intermediate-unlimited"], key("intermediate-unlimited")); err != nil {
		return nil, err
	}
	p256, err := ecdsaKey("signer-ecdsa")
	if err != nil {
		return nil, err
	}
	unknownCritical := pkix.Extension{Id: asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 57264, 14, 1}, Critical: true, Value: []byte{0x05, 0x00}}
	// Signers, by the intermediate they hang from.
	for _, s := range []struct {
		issuer string
		c      cert
	}{
		{"intermediate", signerCert("signer", nil)},
		{"intermediate", signerCert("signer-two-cns", func(c *cert) {
			c.subject = pkix.Name{ExtraNames: []pkix.AttributeTypeAndValue{{Type: oidCommonName, Value: "signer/evil"}, {Type: oidCommonName, Value: "signer/images"}}}
		})},
		{"intermediate", signerCert("signer-upper-case-scheme", func(c *cert) { c.uris = []string{"SPIFFE://" + trustDomain + "/signer/images"} })},
		{"intermediate", signerCert("signer-core-identity", func(c *cert) {
			c.uris, c.subject = []string{"spiffe://" + trustDomain + "/core/core"}, pkix.Name{CommonName: "core/core"}
		})},
		{"intermediate", signerCert("signer-client-auth", func(c *cert) { c.eku = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth} })},
		{"intermediate", signerCert("signer-no-eku", func(c *cert) { c.eku = nil })},
		{"intermediate", signerCert("signer-key-encipherment", func(c *cert) { c.ku = x509.KeyUsageKeyEncipherment })},
		{"intermediate", signerCert("signer-ecdsa", func(c *cert) { c.pub = p256.Public() })},
		{"intermediate", signerCert("signer-cn-disagrees", func(c *cert) { c.subject = pkix.Name{CommonName: "signer/other"} })},
		{"intermediate", signerCert("signer-dns-name", func(c *cert) { c.dns = []string{"signer.fleet.test"} })},
		{"intermediate", signerCert("signer-two-uris", func(c *cert) {
			c.uris = append(c.uris, "spiffe://"+trustDomain+"/signer/other")
		})},
		{"intermediate", signerCert("signer-ca", func(c *cert) { c.ca, c.pathLen, c.ku = true, 0, x509.KeyUsageDigitalSignature|x509.KeyUsageCertSign })},
		{"intermediate", signerCert("signer-critical-extension", func(c *cert) { c.extra = []pkix.Extension{unknownCritical} })},
		{"intermediate", signerCert("signer-expired", func(c *cert) { c.from, c.to = date(2026, 3, 1), date(2026, 5, 30) })},
		{"intermediate", signerCert("signer-renewed", func(c *cert) { c.from, c.to = date(2026, 8, 1), date(2026, 10, 30) })},
		{"intermediate-open", signerCert("signer-foreign-domain", func(c *cert) {
			c.uris = []string{"spiffe://other.test/signer/images"}
		})},
		{"intermediate-other-domain", signerCert("signer-outside-constraints", nil)},
		{"intermediate-not-ca", signerCert("signer-under-not-ca", nil)},
		{"intermediate-codesigning", signerCert("signer-under-codesigning", nil)},
		{"intermediate-any-usage", signerCert("signer-under-any-usage", nil)},
		{"sub-intermediate", signerCert("signer-too-deep", nil)},
		{"sub-intermediate-allowed", signerCert("signer-deep", nil)},
		{"other-intermediate", signerCert("signer-other-pki", nil)},
	} {
		parent := p.certs[s.issuer]
		if p.certs[s.c.name], err = s.c.make(parent, key(s.issuer)); err != nil {
			return nil, err
		}
	}
	p.signer = p.certs["signer"]
	return p, nil
}
