// Package tpmkeytest is a board's TPM for tests, driven by the device
// client's own TPM package (deviceclient/tpmkey) against a software TPM
// (internal/testenv/swtpm): opened, its endorsement key certificate read,
// an attestation key made, device keys made in it with their CSRs, and
// the answer to the proxy's challenge. The proxy's tests use it as the
// real board's half of the attestation; what a real board cannot send is
// proxy/attest/attesttest's.
package tpmkeytest

import (
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"testing"

	"github.com/fleetprov/prov/deviceclient/tpmkey"
	"github.com/fleetprov/prov/internal/testenv/swtpm"
	"github.com/fleetprov/prov/proxy/contract/enrollapi"
)

// Board is a TPM opened for a test, with its EK certificate and an AK;
// all are closed when the test ends. swtpm holds three objects: the AK,
// one device key (NewKey), and the SRK or the EK while a command needs
// them.
type Board struct {
	t      testing.TB
	TPM    *tpmkey.TPM
	EKCert []byte // DER
	AK     *tpmkey.AK
}

// Open opens sw as a board does.
func Open(t testing.TB, sw *swtpm.TPM) *Board {
	t.Helper()
	tp, err := tpmkey.Open(sw.Path())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tp.Close() })
	ek, err := tp.EKCertificate()
	if err != nil {
		t.Fatal(err)
	}
	ak, err := tp.NewAK()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ak.Close() })
	return &Board{t: t, TPM: tp, EKCert: ek, AK: ak}
}

// Request is the board's challenge request.
func (b *Board) Request(board, hardwareID string) enrollapi.ChallengeRequest {
	return enrollapi.ChallengeRequest{Board: board, HardwareID: hardwareID, EKCert: b.EKCert, AKPublic: b.AK.Public()}
}

// NewKey makes a device key in the TPM, loaded until the test ends, and a
// CSR naming nothing signed by it (parsed, and PEM).
func (b *Board) NewKey() (*tpmkey.Key, *x509.CertificateRequest, string) {
	b.t.Helper()
	blob, err := b.TPM.Create()
	if err != nil {
		b.t.Fatal(err)
	}
	k, err := b.TPM.Load(blob)
	if err != nil {
		b.t.Fatal(err)
	}
	b.t.Cleanup(func() { _ = k.Close() })
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, k)
	if err != nil {
		b.t.Fatal(err)
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		b.t.Fatal(err)
	}
	return k, csr, string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))
}

// Answer is the board's answer to ch for the CSR of k and hardwareID.
func (b *Board) Answer(ch *enrollapi.ChallengeResponse, k *tpmkey.Key, csr *x509.CertificateRequest, hardwareID string) *enrollapi.Attestation {
	b.t.Helper()
	att, err := b.AK.Answer(ch, k, csr.Raw, hardwareID)
	if err != nil {
		b.t.Fatalf("answer the challenge: %v", err)
	}
	return att
}
