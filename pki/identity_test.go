package pki_test

import (
	"errors"
	"testing"

	"github.com/fleetprov/prov/pki"
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
	ca := newTestCA(t, "fleet.test")
	dev := "spiffe://fleet.test/device/1a2b3c4d5e"
	core := "spiffe://fleet.test/core/main"
	for _, tc := range []struct {
		name string
		spec leafSpec
		err  error
	}{
		{"device", leafSpec{cn: "1a2b3c4d5e", uris: []string{dev}}, nil},
		{"device without CN", leafSpec{uris: []string{dev}}, nil},
		{"core with hosts", leafSpec{cn: "core/main", uris: []string{core}, dns: []string{"core.example.com"}, ips: []string{"10.0.0.1"}}, nil},
		{"no identity", leafSpec{cn: "1a2b3c4d5e"}, pki.ErrNoIdentity},
		{"two identities", leafSpec{uris: []string{dev, "spiffe://fleet.test/device/0000000000"}}, pki.ErrAmbiguousIdentity},
		{"identity and another URI", leafSpec{uris: []string{dev, "https://example.com/"}}, pki.ErrAmbiguousIdentity},
		{"CN disagrees", leafSpec{cn: "0000000000", uris: []string{dev}}, pki.ErrAmbiguousIdentity},
		{"CN of another role", leafSpec{cn: "admin/x", uris: []string{dev}}, pki.ErrAmbiguousIdentity},
		{"email beside identity", leafSpec{uris: []string{dev}, emails: []string{"a@example.com"}}, pki.ErrAmbiguousIdentity},
		{"device with DNS name", leafSpec{uris: []string{dev}, dns: []string{"core.example.com"}}, pki.ErrAmbiguousIdentity},
		{"admin with IP", leafSpec{uris: []string{"spiffe://fleet.test/admin/a"}, ips: []string{"10.0.0.1"}}, pki.ErrAmbiguousIdentity},
		{"malformed identity", leafSpec{uris: []string{"spiffe://fleet.test/device/XYZ"}}, pki.ErrMalformedIdentity},
	} {
		t.Run(tc.name, func(t *testing.T) {
			leaf, _ := ca.leaf(t, tc.spec)
			_, err := pki.IdentityOf(leaf)
			if !errors.Is(err, tc.err) {
				t.Fatalf("IdentityOf: %v; want %v", err, tc.err)
			}
		})
	}
	if _, err := pki.IdentityOf(ca.inter); err == nil {
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
