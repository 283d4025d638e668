package swtpm_test

import (
	"crypto/x509"
	"encoding/pem"
	"os"
	"testing"

	"github.com/google/go-tpm/tpm2/transport/linuxudstpm"

	"github.com/fleetprov/prov/internal/testenv/swtpm"
)

// The TPM answers on its socket, holds an RSA endorsement key certificate
// in NV memory that chains to its own manufacturer root (and not to
// another TPM's), and keeps its state across a restart.
func TestSoftwareTPM(t *testing.T) {
	a := swtpm.Start(t)
	b := swtpm.Start(t)
	ekCert := func(tpm *swtpm.TPM) *x509.Certificate {
		t.Helper()
		tr, err := linuxudstpm.Open(tpm.Socket)
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = tr.Close() }()
		der, err := swtpm.ReadEKCert(tr)
		if err != nil {
			t.Fatal(err)
		}
		c, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatalf("EK certificate: %v", err)
		}
		return c
	}
	pool := func(path string) *x509.CertPool {
		t.Helper()
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		p := x509.NewCertPool()
		for block, rest := pem.Decode(data); block != nil; block, rest = pem.Decode(rest) {
			c, err := x509.ParseCertificate(block.Bytes)
			if err != nil {
				t.Fatal(err)
			}
			p.AddCert(c)
		}
		return p
	}
	certA := ekCert(a)
	verify := func(c *x509.Certificate, tpm *swtpm.TPM) error {
		c.UnhandledCriticalExtensions = nil // the TPM's SAN (manufacturer, model, version) is a directory name Go does not handle
		_, err := c.Verify(x509.VerifyOptions{Roots: pool(tpm.ManufacturerRoots), Intermediates: pool(tpm.ManufacturerChain), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
		return err
	}
	if err := verify(certA, a); err != nil {
		t.Errorf("A's EK certificate under A's manufacturer: %v", err)
	}
	if err := verify(ekCert(b), a); err == nil {
		t.Error("B's EK certificate verifies under A's manufacturer")
	}
	a.Restart()
	if again := ekCert(a); !again.Equal(certA) {
		t.Error("the EK certificate changed across a restart")
	}
}
