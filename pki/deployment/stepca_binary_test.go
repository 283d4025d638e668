package deployment_test

import (
	"context"
	"testing"
	"time"

	"github.com/fleetprov/prov/pki"
	"github.com/fleetprov/prov/pki/ca/catest"
)

// The configuration init writes runs the real step-ca binary unchanged, and
// its proxy provisioner policy holds there too.
func TestRealStepCABinary(t *testing.T) {
	bin := catest.Binary(t)
	d := catest.NewPKI(t)
	c := catest.RunBinary(t, bin, d)
	client := c.Client
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	_, csr := deviceCSR(t, nil)
	chain, err := client.Sign(ctx, csr, proxyToken(t, c, serialA, csr))
	if err != nil {
		t.Fatalf("sign through the step-ca binary: %v", err)
	}
	if id, err := pki.IdentityOf(chain[0]); err != nil || id.Name != serialA {
		t.Fatalf("identity %v %v", id, err)
	}
	_, csr = deviceCSR(t, nil)
	if _, err := client.Sign(ctx, csr, forgedToken(t, c, map[string]any{"sub": "admin/eve", "sans": []string{"spiffe://fleet.test/admin/eve"}, "cnf": cnfOf(csr)})); err == nil {
		t.Fatal("the step-ca binary signed an admin identity for a proxy token")
	}
}
