package agent_test

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net/url"
	"os"
	"testing"
	"time"

	"github.com/fleetprov/prov/core/coretest"
	"github.com/fleetprov/prov/core/service"
	"github.com/fleetprov/prov/core/store"
	"github.com/fleetprov/prov/deviceclient/agent"
	"github.com/fleetprov/prov/deviceclient/install"
	"github.com/fleetprov/prov/deviceclient/state"
	"github.com/fleetprov/prov/internal/testenv"
	"github.com/fleetprov/prov/pki"
	"github.com/fleetprov/prov/pki/ca/catest"
	"github.com/fleetprov/prov/pki/deployment"
	"github.com/fleetprov/prov/proxy/proxytest"
)

// TestClockIn1970FloorOlderThanCore: a board without a real-time clock
// boots in 1970. Its floor is the issue time of its last bundle, an hour
// old (it was enrolled by a release that kept no floor file), and core's
// server certificate was issued after that bundle: checked at the floor,
// core's certificate is not yet valid. Core's chain proves the time is at
// least its issue time, so the update goes through, the floor rises to
// what core's and the signer's chains proved, and it is written down: an
// agent started again begins from it.
func TestClockIn1970FloorOlderThanCore(t *testing.T) {
	// Core's generations are made an hour ago. A statement is never dated
	// before its signer's chain began (signedimage.Signer.Sign), so core's
	// certificate is issued again once the signer's has a second behind it
	// (certificates count whole seconds): the bundles then predate it, as
	// they do once core has renewed its certificate since.
	c := catest.Start(t)
	signer, err := tls.LoadX509KeyPair(c.IdentityCert(pki.RoleSigner, deployment.DefaultSignerName), c.IdentityKey(pki.RoleSigner, deployment.DefaultSignerName))
	if err != nil {
		t.Fatal(err)
	}
	if err := testenv.WaitFor(5*time.Second, func() error {
		if now := time.Now().Add(-time.Minute); !now.Truncate(time.Second).After(signer.Leaf.NotBefore) { // step-ca backdates a minute
			return errors.New("waiting for a second after the signer's certificate began")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	c.Reissue(t, pki.RoleCore, deployment.DefaultCoreName, 0)
	dir := t.TempDir()
	core := coretest.Run(t, c, coretest.Config(t, c.Deployment, dir, ""), dir,
		service.WithStoreOptions(store.Options{Now: func() time.Time { return time.Now().Add(-time.Hour) }}))
	f := &fleet{core: core, proxy: proxytest.StartWith(t, core, "", local)}
	st, dev := f.enroll(t, "1813BBBK0109")
	if err := os.Remove(st.File(state.FloorFile)); err != nil {
		t.Fatal(err)
	}
	hw, err := st.HighWater()
	if err != nil {
		t.Fatal(err)
	}
	coreLeaf := coreCertificate(t, f)
	if !hw.IssuedAt.Before(coreLeaf.NotBefore) {
		t.Fatalf("the premise: the last bundle (%s) must predate core's certificate (%s)", hw.IssuedAt, coreLeaf.NotBefore)
	}

	epoch := func() time.Time { return time.Unix(0, 0) }
	in1970 := agent.Options{Install: install.Options{Now: epoch}}
	a := newAgent(t, st, in1970)
	if got := a.ClockFloor(); !got.Equal(hw.IssuedAt) {
		t.Fatalf("floor %v; want the last bundle's issue time %v", got, hw.IssuedAt)
	}
	// Checked at that floor alone, as before chains could raise it, core
	// is unreachable.
	if err := dialCoreAt(t, f, a.ClockFloor()); !errors.As(err, new(x509.CertificateInvalidError)) {
		t.Fatalf("core's certificate at the old floor: %v; want not yet valid", err)
	}

	gen := f.change(t, dev.Serial, "no-rtc")
	res, err := a.Update(ctx)
	if err != nil || res == nil || !res.Changed || res.Generation != gen {
		t.Fatalf("update in 1970: %+v %v", res, err)
	}
	raised := a.ClockFloor()
	if raised.Before(coreLeaf.NotBefore) {
		t.Fatalf("floor %v after talking to core; want at least its certificate's issue time %v", raised, coreLeaf.NotBefore)
	}
	if kept, err := st.Floor(); err != nil || !kept.Equal(raised) {
		t.Fatalf("floor file %v %v; want %v", kept, err, raised)
	}

	// Started again, the agent begins at the floor it wrote down, above
	// the newest bundle's issue time.
	if hw, err = st.HighWater(); err != nil || !hw.IssuedAt.Before(raised) {
		t.Fatalf("high-water %+v %v", hw, err)
	}
	b := newAgent(t, st, in1970)
	if got := b.ClockFloor(); !got.Equal(raised) {
		t.Fatalf("after a restart the floor is %v; want the one written down, %v", got, raised)
	}
	if res, err := b.Update(ctx); err != nil || res != nil {
		t.Fatalf("update after the restart: %+v %v", res, err)
	}
}

// coreCertificate is core's TLS leaf.
func coreCertificate(t *testing.T, f *fleet) *x509.Certificate {
	t.Helper()
	cert, err := tls.LoadX509KeyPair(f.core.IdentityCert(pki.RoleCore, deployment.DefaultCoreName), f.core.IdentityKey(pki.RoleCore, deployment.DefaultCoreName))
	if err != nil {
		t.Fatal(err)
	}
	return cert.Leaf
}

// dialCoreAt opens TLS to core as crypto/tls alone would check it at the
// time at.
func dialCoreAt(t *testing.T, f *fleet, at time.Time) error {
	t.Helper()
	roots, err := pki.LoadTrustBundle(f.core.RootCert())
	if err != nil {
		t.Fatal(err)
	}
	u, err := url.Parse(f.core.URL)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := tls.Dial("tcp", u.Host, &tls.Config{RootCAs: roots.Pool(), ServerName: u.Hostname(), MinVersion: tls.VersionTLS13,
		Time: func() time.Time { return at }})
	if err == nil {
		_ = conn.Close()
	}
	return err
}
