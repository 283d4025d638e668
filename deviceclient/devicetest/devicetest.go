// Package devicetest makes what device-client tests need without a CA
// server: a deployment root, an image signer under it, and signed bundles
// for a serial.
package devicetest

import (
	"crypto/ed25519"
	"crypto/x509"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/fleetprov/prov/core/contract/imagespec"
	"github.com/fleetprov/prov/core/imagebuild"
	"github.com/fleetprov/prov/pki"
	"github.com/fleetprov/prov/pki/pkitest"
	"github.com/fleetprov/prov/pki/signedimage"
)

// TrustDomain of the test deployment.
const TrustDomain = "fleet.test"

// Fleet is a test deployment: its root and image signer.
type Fleet struct {
	CA     *pkitest.CA
	Roots  *pki.TrustBundle
	Signer *signedimage.Signer
	// RootFile is the root written to a file, as a device holds it.
	RootFile string
}

// New makes a fleet.
func New(t testing.TB) *Fleet {
	t.Helper()
	ca := pkitest.NewCA(t, TrustDomain)
	roots, err := pki.ParseTrustBundle(ca.RootPEM)
	if err != nil {
		t.Fatal(err)
	}
	leaf, key := ca.Leaf(t, pkitest.LeafSpec{CN: "signer/images", URIs: []string{"spiffe://" + TrustDomain + "/signer/images"},
		EKU: []x509.ExtKeyUsage{x509.ExtKeyUsageCodeSigning}, Ed25519: true,
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour)})
	s, err := signedimage.NewSigner(key.(ed25519.PrivateKey), []*x509.Certificate{leaf, ca.Inter})
	if err != nil {
		t.Fatal(err)
	}
	rootFile := filepath.Join(t.TempDir(), "root.pem")
	if err := os.WriteFile(rootFile, ca.RootPEM, 0o644); err != nil { //nolint:gosec // a public root
		t.Fatal(err)
	}
	return &Fleet{CA: ca, Roots: roots, Signer: s, RootFile: rootFile}
}

// Record is a device record for serial at generation, its hostname
// naming the generation so a mounted image can be told apart.
func Record(serial string, generation uint64) *imagebuild.Record {
	return &imagebuild.Record{Serial: serial, Generation: generation, IssuedAt: time.Now().UTC().Truncate(time.Second),
		Hostname: fmt.Sprintf("dev-%s-g%d", serial, generation), MachineID: "5f1e0c9a7b3d4e2f8a6c0b1d3e5f7a9c",
		MQTTClientID: serial, MQTTGroupID: "fleet",
		Data: map[string]string{"/etc/prov/data/generation": fmt.Sprintf("%d\n", generation)}}
}

// Bundle signs the record.
func (f *Fleet) Bundle(t testing.TB, rec *imagebuild.Record) []byte {
	t.Helper()
	b, _, err := imagebuild.BuildBundle(rec, imagespec.DefaultRules(), f.Signer)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
