package pki_test

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/fleetprov/prov/pki"
	"github.com/fleetprov/prov/pki/pkitest"
)

func TestFloorAt(t *testing.T) {
	now, floor := time.Unix(0, 0), time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	f := pki.NewFloor(floor, nil)
	if got := f.At(now); !got.Equal(floor) {
		t.Errorf("At(1970) with a floor in 2026 = %v", got)
	}
	later := floor.Add(time.Hour)
	if got := f.At(later); !got.Equal(later) {
		t.Errorf("At(later) = %v", got)
	}
	var none *pki.Floor
	if got := none.At(now); !got.Equal(now) || !none.Time().IsZero() || none.Raise(later) != nil {
		t.Errorf("a nil floor: At %v, Time %v", got, none.Time())
	}
}

// recorder is a floor's persistence: every value written, in order.
type recorder struct{ written []time.Time }

func (r *recorder) persist(t time.Time) error {
	r.written = append(r.written, t)
	return nil
}

func TestFloorOnlyRises(t *testing.T) {
	base := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	r := &recorder{}
	f := pki.NewFloor(base, r.persist)
	for _, d := range []time.Duration{-time.Hour, 0, time.Hour, 30 * time.Minute, 2 * time.Hour, -24 * time.Hour} {
		if err := f.Raise(base.Add(d)); err != nil {
			t.Fatal(err)
		}
	}
	if want := []time.Time{base.Add(time.Hour), base.Add(2 * time.Hour)}; !f.Time().Equal(want[1]) || !slices.EqualFunc(r.written, want, time.Time.Equal) {
		t.Fatalf("floor %v, written %v; want %v, written %v", f.Time(), r.written, want[1], want)
	}
	// A write that fails: the floor stays raised in memory, the caller hears of it.
	boom := errors.New("disk full")
	g := pki.NewFloor(base, func(time.Time) error { return boom })
	if err := g.Raise(base.Add(time.Minute)); !errors.Is(err, boom) || !g.Time().Equal(base.Add(time.Minute)) {
		t.Fatalf("failed write: %v, floor %v", err, g.Time())
	}
}

// TestChainRaisesFloor: a board in 1970 whose floor (its build, half an
// hour ago, after the test CA's intermediate was made) is older than a
// certificate from its root accepts that certificate and raises its floor
// to the certificate's issue time; nothing that fails any check raises it.
func TestChainRaisesFloor(t *testing.T) {
	ca, other, bundle := twoCAs(t)
	dev := "spiffe://fleet.test/device/1a2b3c4d5e"
	epoch := time.Unix(0, 0)
	now := time.Now().UTC().Truncate(time.Second) // certificates hold whole seconds
	floor := now.Add(-30 * time.Minute)
	valid := func(from, to time.Duration) pkitest.LeafSpec {
		return pkitest.LeafSpec{URIs: []string{dev}, EKU: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, NotBefore: now.Add(from), NotAfter: now.Add(to)}
	}
	for _, tc := range []struct {
		name   string
		ca     *pkitest.CA
		spec   pkitest.LeafSpec
		clock  time.Time
		roles  []pki.Role
		err    error
		raised time.Duration // the floor afterwards, from now; 0: unchanged
	}{
		{"issued after the floor: verifies in 1970, raises the floor", ca, valid(-10*time.Minute, time.Hour), epoch, nil, nil, -10 * time.Minute},
		{"with the role asked for", ca, valid(-10*time.Minute, time.Hour), epoch, []pki.Role{pki.RoleDevice}, nil, -10 * time.Minute},
		{"issued in the future: the floor moves there (see Floor)", ca, valid(time.Hour, 2*time.Hour), now, nil, nil, time.Hour},
		{"another role: raises nothing", ca, valid(-time.Hour, time.Hour), epoch, []pki.Role{pki.RoleAdmin}, pki.ErrRoleNotAllowed, 0},
		{"another root: raises nothing", other, valid(-time.Hour, time.Hour), epoch, nil, pki.ErrUntrusted, 0},
		{"another usage: raises nothing", ca, pkitest.LeafSpec{URIs: []string{dev}, EKU: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour)}, epoch, nil, pki.ErrKeyUsage, 0},
		{"foreign trust domain under our root: raises nothing", ca, pkitest.LeafSpec{URIs: []string{"spiffe://other.test/device/1a2b3c4d5e"}, EKU: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour)}, epoch, nil, pki.ErrForeignTrustDomain, 0},
		// A raise never moves a check past an expiry.
		{"expired before the floor: refused although valid at its own issue time", ca, valid(-50*time.Minute, -40*time.Minute), epoch, nil, pki.ErrExpired, 0},
		{"expired by the clock: refused although the floor is inside its validity", ca, valid(-35*time.Minute, -25*time.Minute), now, nil, pki.ErrExpired, 0},
		// What a board without a clock cannot tell (see Floor).
		{"old but unexpired at the floor: accepted, raises nothing", ca, valid(-35*time.Minute, -25*time.Minute), epoch, nil, nil, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := &recorder{}
			f := pki.NewFloor(floor, r.persist)
			leaf, _ := tc.ca.Leaf(t, tc.spec)
			chain := []*x509.Certificate{leaf, tc.ca.Inter}
			opts := pki.VerifyOptions{Time: tc.clock, Floor: f, KeyUsage: x509.ExtKeyUsageClientAuth, Roles: tc.roles}
			_, err := bundle.Verify(chain, opts)
			if !errors.Is(err, tc.err) {
				t.Fatalf("Verify: %v; want %v", err, tc.err)
			}
			want, written := floor, []time.Time(nil)
			if tc.raised != 0 {
				want = now.Add(tc.raised)
				written = []time.Time{want}
			}
			if !f.Time().Equal(want) || !slices.EqualFunc(r.written, written, time.Time.Equal) {
				t.Fatalf("floor %v, written %v; want %v", f.Time(), r.written, want)
			}
			// Without a floor the clock alone decides (servers with real clocks).
			if tc.clock.Equal(epoch) && tc.err == nil {
				opts.Floor = nil
				if _, err := bundle.Verify(chain, opts); !errors.Is(err, pki.ErrExpired) {
					t.Fatalf("in 1970 without a floor: %v", err)
				}
			}
		})
	}
}

// TestTLSChainRaisesFloor: the same over a TLS handshake, where the
// chain is the server's and its host name counts too.
func TestTLSChainRaisesFloor(t *testing.T) {
	ca, other, bundle := twoCAs(t)
	now := time.Now().UTC().Truncate(time.Second)
	floor := now.Add(-30 * time.Minute)
	epoch := func() time.Time { return time.Unix(0, 0) }
	server := func(ca *pkitest.CA, uri string, from, to time.Duration) *tls.Config {
		certFile, keyFile := ca.KeyPair(t, pkitest.LeafSpec{URIs: []string{uri}, DNS: []string{"core.example.com"}, IPs: []string{"127.0.0.1"},
			EKU: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, NotBefore: now.Add(from), NotAfter: now.Add(to)})
		kp, err := pki.LoadKeyPair(certFile, keyFile)
		if err != nil {
			t.Fatal(err)
		}
		return pki.ServerTLSConfig(kp, bundle, pki.ServerOptions{ClientCerts: pki.NoClientCert})
	}
	core := "spiffe://fleet.test/core/main"
	for _, tc := range []struct {
		name       string
		server     *tls.Config
		serverName string
		raised     time.Duration // 0: the handshake fails and the floor stays
	}{
		{"core issued after the floor", server(ca, core, -10*time.Minute, time.Hour), "core.example.com", -10 * time.Minute},
		{"core by IP address", server(ca, core, -10*time.Minute, time.Hour), "127.0.0.1", -10 * time.Minute},
		{"another host name", server(ca, core, -time.Hour, time.Hour), "elsewhere.example.com", 0},
		{"no host name to check", server(ca, core, -time.Hour, time.Hour), "", 0},
		{"a proxy posing as core", server(ca, "spiffe://fleet.test/proxy/p1", -time.Hour, time.Hour), "core.example.com", 0},
		{"another root", server(other, core, -time.Hour, time.Hour), "core.example.com", 0},
		{"expired before the floor", server(ca, core, -50*time.Minute, -40*time.Minute), "core.example.com", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := &recorder{}
			f := pki.NewFloor(floor, r.persist)
			client := pki.ClientTLSConfig(nil, bundle, pki.ClientOptions{ServerName: tc.serverName, ServerRoles: []pki.Role{pki.RoleCore}, Now: epoch, Floor: f})
			_, serr, cerr := handshake(t, tc.server, client)
			ok := serr == nil && cerr == nil
			if ok != (tc.raised != 0) {
				t.Fatalf("server %v, client %v", serr, cerr)
			}
			want, written := floor, []time.Time(nil)
			if tc.raised != 0 {
				want = now.Add(tc.raised)
				written = []time.Time{want}
			}
			if !f.Time().Equal(want) || !slices.EqualFunc(r.written, written, time.Time.Equal) {
				t.Fatalf("floor %v, written %v; want %v (client: %v)", f.Time(), r.written, want, cerr)
			}
			if tc.serverName == "" && (cerr == nil || !strings.Contains(cerr.Error(), "no server name")) {
				t.Fatalf("without a host name: %v", cerr)
			}
		})
	}
}
