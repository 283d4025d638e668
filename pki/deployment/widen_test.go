package deployment_test

import (
	"bytes"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"math/big"
	"os"
	"slices"
	"testing"
	"time"

	"go.step.sm/crypto/pemutil"

	"github.com/fleetprov/prov/pki/ca/catest"
	"github.com/fleetprov/prov/pki/deployment"
)

// Widening never narrows: an intermediate from before init constrained
// hosts (URIs only) already permits every host, so widening it changes
// nothing rather than permitting only the hosts named.
func TestWidenNeverNarrows(t *testing.T) {
	d := catest.NewPKI(t)
	root, inter := readCert(t, d.RootCert()), readCert(t, d.IntermediateCert())
	rootKey, err := pemutil.ParseKey(mustRead(t, d.RootKey()), pemutil.WithPassword(catest.Password))
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{
		SerialNumber: big.NewInt(2), RawSubject: inter.RawSubject,
		NotBefore: time.Now().Add(-time.Minute), NotAfter: inter.NotAfter,
		KeyUsage: inter.KeyUsage, BasicConstraintsValid: true, IsCA: true, MaxPathLenZero: true,
		PermittedURIDomains: []string{catest.TrustDomain},
	}, root, inter.PublicKey, rootKey)
	if err != nil {
		t.Fatal(err)
	}
	old := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	if err := os.WriteFile(d.IntermediateCert(), old, 0o644); err != nil { //nolint:gosec // public, as init writes it
		t.Fatal(err)
	}
	res, err := d.Widen(deployment.WidenOptions{Password: catest.Password, Hosts: []string{"core2.fleet.test", "10.0.0.2"}})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Added) != 0 || !slices.Equal(res.Permitted, []string{"any DNS name", "any IP address"}) || res.Replaced != "" {
		t.Errorf("widen of an unconstrained intermediate: %+v", res)
	}
	if !bytes.Equal(mustRead(t, d.IntermediateCert()), old) {
		t.Error("widen rewrote an intermediate that already permits every host")
	}
}
