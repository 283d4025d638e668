package stepca_test

import (
	"crypto/tls"
	"errors"
	"testing"
	"time"

	"github.com/fleetprov/prov/pki"
	"github.com/fleetprov/prov/pki/ca/catest"
	"github.com/fleetprov/prov/pki/deployment"
	"github.com/fleetprov/prov/pki/pkitest"
	"github.com/fleetprov/prov/pki/stepca"
)

// Issue 13, finding 8: a recorder holding core's certificate, which names
// the CA's host too (one machine), was accepted in step-ca's place and sent
// a token. WithCAIdentityCheck refuses it at the handshake, before any
// request, also at a clock floor (the device's way of checking); the real
// step-ca passes the same check (TestAgainstStepCA uses it throughout).
func TestCAIdentityCheck(t *testing.T) {
	c := catest.Shared(t)
	roots, err := pki.LoadTrustBundle(c.RootCert())
	if err != nil {
		t.Fatal(err)
	}
	core, err := tls.LoadX509KeyPair(c.IdentityCert(pki.RoleCore, deployment.DefaultCoreName), c.IdentityKey(pki.RoleCore, deployment.DefaultCoreName))
	if err != nil {
		t.Fatal(err)
	}
	rec := pkitest.NewRecorder(t, core)
	url := rec.URL
	_, csr := catest.NewCSR(t)
	for name, opts := range map[string][]stepca.Option{
		"now":        {stepca.WithCAIdentityCheck()},
		"at a floor": {stepca.WithCAIdentityCheck(), stepca.WithClock(nil, pki.NewFloor(time.Now().Add(-time.Hour), nil))},
	} {
		t.Run(name, func(t *testing.T) {
			client, err := stepca.New(url, roots, opts...)
			if err != nil {
				t.Fatal(err)
			}
			if err := client.Health(ctxT(t)); !errors.Is(err, stepca.ErrNotTheCA) {
				t.Fatalf("health at core's certificate: %v; want ErrNotTheCA", err)
			}
			if _, err := client.Sign(ctxT(t), csr, "a one-time token"); !errors.Is(err, stepca.ErrNotTheCA) {
				t.Fatalf("sign at core's certificate: %v; want ErrNotTheCA", err)
			}
		})
	}
	if n := rec.Requests.Load(); n != 0 {
		t.Fatalf("the recorder received %d requests (%d tokens)", n, rec.Tokens.Load())
	}
	// Without the check it is taken for the CA, as finding 8 saw.
	plain, err := stepca.New(url, roots)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := plain.Sign(ctxT(t), csr, "a one-time token"); err == nil || rec.Tokens.Load() != 1 {
		t.Fatalf("without the check: %v, %d tokens recorded; want the token sent and a malformed answer", err, rec.Tokens.Load())
	}
}
