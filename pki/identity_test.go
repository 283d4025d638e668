package pki_test

import (
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/fleetprov/prov/pki"
	"github.com/fleetprov/prov/pki/pkitest"
)

func TestParseIdentity(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want pki.Identity
		err  error
	}{
		{"spiffe://fleet.test/device/1a2b3c4d5e", pki.Identity{TrustDomain: "fleet.test", Role: pki.RoleDevice, Name: "1a2b3c4d5e"}, nil},
		{"spiffe://fleet.test/core/core-1", pki.Identity{TrustDomain: "fleet.test", Role: pki.RoleCore, Name: "core-1"}, nil},
		{"spiffe://a.b.c/admin/alice", pki.Identity{TrustDomain: "a.b.c", Role: pki.RoleAdmin, Name: "alice"}, nil},
		{"spiffe://fleet.test/proxy/factory1", pki.Identity{TrustDomain: "fleet.test", Role: pki.RoleProxy, Name: "factory1"}, nil},
		{"spiffe://fleet.test/signer/images", pki.Identity{TrustDomain: "fleet.test", Role: pki.RoleSigner, Name: "images"}, nil},
		// Not canonical, not ours, or not well formed.
		{"", pki.Identity{}, pki.ErrMalformedIdentity},
		{"https://fleet.test/device/1a2b3c4d5e", pki.Identity{}, pki.ErrMalformedIdentity},
		{"SPIFFE://fleet.test/device/1a2b3c4d5e", pki.Identity{}, pki.ErrMalformedIdentity},
		{"spiffe://Fleet.test/device/1a2b3c4d5e", pki.Identity{}, pki.ErrMalformedIdentity},
		{"spiffe://fleet.test/device/1A2B3C4D5E", pki.Identity{}, pki.ErrMalformedIdentity},
		{"spiffe://fleet.test/device/1a2b3c4d5", pki.Identity{}, pki.ErrMalformedIdentity},
		{"spiffe://fleet.test/device/1a2b3c4d5e0", pki.Identity{}, pki.ErrMalformedIdentity},
		{"spiffe://fleet.test/device/1a2b3c4d5g", pki.Identity{}, pki.ErrMalformedIdentity},
		{"spiffe://fleet.test/device/1a2b3c4d5e/", pki.Identity{}, pki.ErrMalformedIdentity},
		{"spiffe://fleet.test/device/../admin/x", pki.Identity{}, pki.ErrMalformedIdentity},
		{"spiffe://fleet.test/device/%31a2b3c4d5e", pki.Identity{}, pki.ErrMalformedIdentity},
		{"spiffe://fleet.test:443/device/1a2b3c4d5e", pki.Identity{}, pki.ErrMalformedIdentity},
		{"spiffe://user@fleet.test/device/1a2b3c4d5e", pki.Identity{}, pki.ErrMalformedIdentity},
		{"spiffe://fleet.test/device/1a2b3c4d5e?x=1", pki.Identity{}, pki.ErrMalformedIdentity},
		{"spiffe://fleet.test/device/1a2b3c4d5e#f", pki.Identity{}, pki.ErrMalformedIdentity},
		{"spiffe://fleet.test/root/x", pki.Identity{}, pki.ErrMalformedIdentity},
		{"spiffe://fleet.test/core/-core", pki.Identity{}, pki.ErrMalformedIdentity},
		{"spiffe://fleet.test/core/Core", pki.Identity{}, pki.ErrMalformedIdentity},
		{"spiffe://fleet..test/core/core", pki.Identity{}, pki.ErrMalformedIdentity},
		{"spiffe:///core/core", pki.Identity{}, pki.ErrMalformedIdentity},
		{"spiffe://fleet.test/device/1a2b3c4d5e\x00", pki.Identity{}, pki.ErrMalformedIdentity},
		{"spiffe://fleet.test/device/１a2b3c4d5e", pki.Identity{}, pki.ErrMalformedIdentity}, // full-width digit
	} {
		got, err := pki.ParseIdentity(tc.in)
		if !errors.Is(err, tc.err) || got != tc.want {
			t.Errorf("ParseIdentity(%q) = %v, %v; want %v, %v", tc.in, got, err, tc.want, tc.err)
		}
		if err == nil && got.String() != tc.in {
			t.Errorf("ParseIdentity(%q).String() = %q; not a round trip", tc.in, got.String())
		}
	}
}

func TestCommonName(t *testing.T) {
	dev, err := pki.DeviceIdentity("fleet.test", "00000000ff")
	if err != nil {
		t.Fatal(err)
	}
	core, err := pki.NewIdentity("fleet.test", pki.RoleCore, "main")
	if err != nil {
		t.Fatal(err)
	}
	if dev.CommonName() != "00000000ff" || core.CommonName() != "core/main" {
		t.Errorf("CNs %q %q", dev.CommonName(), core.CommonName())
	}
	if dev.URI().String() != dev.String() {
		t.Errorf("URI %q != String %q", dev.URI(), dev.String())
	}
}

func TestIdentityOf(t *testing.T) {
	ca := pkitest.NewCA(t, "fleet.test")
	dev := "spiffe://fleet.test/device/1a2b3c4d5e"
	core := "spiffe://fleet.test/core/main"
	for _, tc := range []struct {
		name string
		spec pkitest.LeafSpec
		err  error
	}{
		{"device", pkitest.LeafSpec{CN: "1a2b3c4d5e", URIs: []string{dev}}, nil},
		{"device without CN", pkitest.LeafSpec{URIs: []string{dev}}, nil},
		{"core with hosts", pkitest.LeafSpec{CN: "core/main", URIs: []string{core}, DNS: []string{"core.example.com"}, IPs: []string{"10.0.0.1"}}, nil},
		{"no identity", pkitest.LeafSpec{CN: "1a2b3c4d5e"}, pki.ErrNoIdentity},
		{"two identities", pkitest.LeafSpec{URIs: []string{dev, "spiffe://fleet.test/device/0000000000"}}, pki.ErrAmbiguousIdentity},
		{"identity and another URI", pkitest.LeafSpec{URIs: []string{dev, "https://example.com/"}}, pki.ErrAmbiguousIdentity},
		{"CN disagrees", pkitest.LeafSpec{CN: "0000000000", URIs: []string{dev}}, pki.ErrAmbiguousIdentity},
		{"CN of another role", pkitest.LeafSpec{CN: "admin/x", URIs: []string{dev}}, pki.ErrAmbiguousIdentity},
		{"email beside identity", pkitest.LeafSpec{URIs: []string{dev}, Emails: []string{"a@example.com"}}, pki.ErrAmbiguousIdentity},
		{"device with DNS name", pkitest.LeafSpec{URIs: []string{dev}, DNS: []string{"core.example.com"}}, pki.ErrAmbiguousIdentity},
		{"admin with IP", pkitest.LeafSpec{URIs: []string{"spiffe://fleet.test/admin/a"}, IPs: []string{"10.0.0.1"}}, pki.ErrAmbiguousIdentity},
		{"malformed identity", pkitest.LeafSpec{URIs: []string{"spiffe://fleet.test/device/XYZ"}}, pki.ErrMalformedIdentity},
	} {
		t.Run(tc.name, func(t *testing.T) {
			leaf, _ := ca.Leaf(t, tc.spec)
			_, err := pki.IdentityOf(leaf)
			if !errors.Is(err, tc.err) {
				t.Fatalf("IdentityOf: %v; want %v", err, tc.err)
			}
		})
	}
	if _, err := pki.IdentityOf(ca.Inter); err == nil {
		t.Error("a CA certificate parsed as an identity")
	}
}

func TestValidateSerial(t *testing.T) {
	for _, s := range []string{"", "1a2b3c4d5", "1a2b3c4d5e1", "1a2b3c4d5E", "1a2b3c4d5-", " 1a2b3c4d5", "1a2b3c4d\n5"} {
		if pki.ValidateSerial(s) == nil {
			t.Errorf("ValidateSerial(%q) accepted", s)
		}
	}
	if err := pki.ValidateSerial("0123456789"); err != nil {
		t.Error(err)
	}
}

// FuzzParseIdentity: whatever the input, parsing never panics, and what it
// accepts is canonical (prints back as the input) and valid.
func FuzzParseIdentity(f *testing.F) {
	f.Add("spiffe://fleet.test/device/1a2b3c4d5e")
	f.Add("spiffe://fleet.test/core/main")
	f.Add("spiffe://fleet.test/device/%2e%2e")
	f.Fuzz(func(t *testing.T, s string) {
		id, err := pki.ParseIdentity(s)
		if err != nil {
			return
		}
		if id.String() != s {
			t.Fatalf("accepted %q but prints %q", s, id.String())
		}
		if _, err := pki.NewIdentity(id.TrustDomain, id.Role, id.Name); err != nil {
			t.Fatalf("accepted %q which does not validate: %v", s, err)
		}
	})
}

// A trust domain's length is stated in characters, as counted: 100
// Devanagari digits are 100 characters (300 bytes).
func TestTrustDomainLength(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{strings.Repeat("\u0967", 100), "want a lower-case DNS name such as"}, // not "of 1-253 characters": it has 100
		{strings.Repeat("\u0967", 254), "254 characters, want a lower-case DNS name of 1 to 253"},
		{strings.Repeat("a", 254), "254 characters, want a lower-case DNS name of 1 to 253"},
		{"", "0 characters"},
	} {
		err := pki.ValidateTrustDomain(tc.in)
		if !errors.Is(err, pki.ErrMalformedIdentity) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ValidateTrustDomain(%.12q...): %v; want %q", tc.in, err, tc.want)
		}
	}
}

// TestIdentityOneSpelling: the names as the certificate encodes them, not
// as crypto/x509 re-reads them, decide (issue 14): url.Parse lower-cases
// SPIFFE://, and pkix.Name keeps only the last of two CNs.
func TestIdentityOneSpelling(t *testing.T) {
	ca := pkitest.NewCA(t, "fleet.test")
	oidCN := asn1.ObjectIdentifier{2, 5, 4, 3}
	otherName, err := asn1.Marshal([]asn1.RawValue{
		{Class: asn1.ClassContextSpecific, Tag: 6, Bytes: []byte("spiffe://fleet.test/device/1a2b3c4d5e")},
		{Class: asn1.ClassContextSpecific, Tag: 4, IsCompound: true, Bytes: []byte{0x30, 0x00}}, // directoryName
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		tmpl func(*x509.Certificate)
		err  error
	}{
		{"control: lower-case scheme, one CN", func(c *x509.Certificate) {}, nil},
		{"SPIFFE in upper case", func(c *x509.Certificate) { c.URIs[0].Scheme = "SPIFFE" }, pki.ErrMalformedIdentity},
		{"two CNs, the last one right", func(c *x509.Certificate) {
			c.Subject = pkix.Name{ExtraNames: []pkix.AttributeTypeAndValue{{Type: oidCN, Value: "0000000000"}, {Type: oidCN, Value: "1a2b3c4d5e"}}}
		}, pki.ErrAmbiguousIdentity},
		{"a directoryName beside the URI", func(c *x509.Certificate) {
			c.URIs = nil
			c.ExtraExtensions = []pkix.Extension{{Id: asn1.ObjectIdentifier{2, 5, 29, 17}, Value: otherName}}
		}, pki.ErrAmbiguousIdentity},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tmpl := &x509.Certificate{
				Subject: pkix.Name{CommonName: "1a2b3c4d5e"}, NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
				URIs: []*url.URL{{Scheme: "spiffe", Host: "fleet.test", Path: "/device/1a2b3c4d5e"}},
			}
			tc.tmpl(tmpl)
			leaf := pkitest.Sign(t, tmpl, ca.Inter, &ca.InterKey.PublicKey, ca.InterKey)
			if _, err := pki.IdentityOf(leaf); !errors.Is(err, tc.err) || (tc.err == nil && err != nil) {
				t.Fatalf("IdentityOf: %v; want %v", err, tc.err)
			}
		})
	}
}
