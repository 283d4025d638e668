package pki_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"math/big"
	"strings"
	"testing"

	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"

	"github.com/fleetprov/prov/pki"
)

// certWith is a self-signed certificate with the given certificatePolicies
// extension value (none if nil) or Go's own encoding of policies.
func certWith(t *testing.T, policies []byte, goPolicies ...x509.OID) *x509.Certificate {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "t"}, Policies: goPolicies}
	if policies != nil {
		tmpl.ExtraExtensions = []pkix.Extension{{Id: asn1.ObjectIdentifier{2, 5, 29, 32}, Value: policies}}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// policiesWith encodes certificatePolicies with the TPM key policy and a
// user notice of text (as device.tpl writes it).
func policiesWith(t *testing.T, text string) []byte {
	t.Helper()
	oid, err := pki.TPMKeyPolicy.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	var b cryptobyte.Builder
	b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
			b.AddASN1(cbasn1.OBJECT_IDENTIFIER, func(b *cryptobyte.Builder) { b.AddBytes(oid) })
			b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
				b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
					b.AddASN1ObjectIdentifier(asn1.ObjectIdentifier{1, 3, 6, 1, 5, 5, 7, 2, 2})
					b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
						b.AddASN1(cbasn1.UTF8String, func(b *cryptobyte.Builder) { b.AddBytes([]byte(text)) })
					})
				})
			})
		})
	})
	return b.BytesOrPanic()
}

// What a device certificate says of its key: nothing (a software key),
// the TPM key policy naming an endorsement key, or a policy in a form this
// project does not write, which is an error rather than "software".
func TestKeyAttestationOf(t *testing.T) {
	ek := strings.Repeat("0f", 32)
	if ka, err := pki.KeyAttestationOf(certWith(t, nil)); err != nil || ka.TPM {
		t.Errorf("no policy: %+v %v, want a software key", ka, err)
	}
	other, err := x509.ParseOID("1.2.3.4")
	if err != nil {
		t.Fatal(err)
	}
	if ka, err := pki.KeyAttestationOf(certWith(t, nil, other)); err != nil || ka.TPM {
		t.Errorf("another policy: %+v %v, want a software key", ka, err)
	}
	if ka, err := pki.KeyAttestationOf(certWith(t, policiesWith(t, pki.TPMNoticePrefix+ek))); err != nil || !ka.TPM || ka.EKSHA256 != ek {
		t.Errorf("the TPM key policy: %+v %v, want TPM with %s", ka, err, ek)
	}
	for name, c := range map[string]*x509.Certificate{
		"no notice":          certWith(t, nil, pki.TPMKeyPolicy),
		"another notice":     certWith(t, policiesWith(t, "hello")),
		"an uppercase hash":  certWith(t, policiesWith(t, pki.TPMNoticePrefix+strings.ToUpper(ek))),
		"a short hash":       certWith(t, policiesWith(t, pki.TPMNoticePrefix+ek[:62])),
		"text after the key": certWith(t, policiesWith(t, pki.TPMNoticePrefix+ek+" ")),
	} {
		if ka, err := pki.KeyAttestationOf(c); !errors.Is(err, pki.ErrBadKeyAttestation) {
			t.Errorf("%s: %+v %v, want ErrBadKeyAttestation", name, ka, err)
		}
	}
}
