// Package attesttest is what the proxy's attestation tests need of a board
// that a real one (the device client's deviceclient/tpmkey, which the
// good paths use) cannot send: go-tpm driven directly against a software
// TPM (internal/testenv/swtpm) with the EK certificate from NV, an
// attestation key, credential activation with the EK's PolicySecret
// session, device keys from any template (an exportable one, to be
// refused) and TPM2_Certify over the enrollment's qualifying data; and the
// templates the fuzz seeds are made from.
package attesttest

import (
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
	"github.com/google/go-tpm/tpm2/transport/linuxudstpm"

	"github.com/fleetprov/prov/internal/testenv/swtpm"
	"github.com/fleetprov/prov/proxy/contract/enrollapi"
)

// Board is a board's TPM with its EK and AK made.
type Board struct {
	t      testing.TB
	tr     transport.TPM
	EKCert []byte // DER
	srk    tpm2.NamedHandle
	ak     tpm2.NamedHandle
	akPub  []byte // TPM2B_PUBLIC
}

// AKTemplate is the attestation key's: restricted ECDSA P-256 SHA-256,
// fixed to the TPM.
var AKTemplate = tpm2.TPMTPublic{
	Type: tpm2.TPMAlgECC, NameAlg: tpm2.TPMAlgSHA256,
	ObjectAttributes: tpm2.TPMAObject{FixedTPM: true, FixedParent: true, SensitiveDataOrigin: true, UserWithAuth: true, Restricted: true, SignEncrypt: true},
	Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgECC, &tpm2.TPMSECCParms{
		Scheme:  tpm2.TPMTECCScheme{Scheme: tpm2.TPMAlgECDSA, Details: tpm2.NewTPMUAsymScheme(tpm2.TPMAlgECDSA, &tpm2.TPMSSigSchemeECDSA{HashAlg: tpm2.TPMAlgSHA256})},
		CurveID: tpm2.TPMECCNistP256,
	}),
}

// KeyTemplate is the device key's: unrestricted ECDSA P-256 signing,
// fixed to the TPM.
var KeyTemplate = tpm2.TPMTPublic{
	Type: tpm2.TPMAlgECC, NameAlg: tpm2.TPMAlgSHA256,
	ObjectAttributes: tpm2.TPMAObject{FixedTPM: true, FixedParent: true, SensitiveDataOrigin: true, UserWithAuth: true, SignEncrypt: true},
	Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgECC, &tpm2.TPMSECCParms{
		Scheme:  tpm2.TPMTECCScheme{Scheme: tpm2.TPMAlgECDSA, Details: tpm2.NewTPMUAsymScheme(tpm2.TPMAlgECDSA, &tpm2.TPMSSigSchemeECDSA{HashAlg: tpm2.TPMAlgSHA256})},
		CurveID: tpm2.TPMECCNistP256,
	}),
}

// Open opens tpm and makes its EK, SRK and AK.
func Open(t testing.TB, tpm *swtpm.TPM) *Board {
	t.Helper()
	tr, err := linuxudstpm.Open(tpm.Socket)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tr.Close() })
	ekCert, err := swtpm.ReadEKCert(tr)
	if err != nil {
		t.Fatal(err)
	}
	b := &Board{t: t, tr: tr, EKCert: ekCert}
	srk, err := tpm2.CreatePrimary{PrimaryHandle: tpm2.TPMRHOwner, InPublic: tpm2.New2B(tpm2.ECCSRKTemplate)}.Execute(tr)
	if err != nil {
		t.Fatalf("SRK: %v", err)
	}
	b.srk = tpm2.NamedHandle{Handle: srk.ObjectHandle, Name: srk.Name}
	// The TPM has three object slots: the SRK and the AK stay loaded,
	// the EK and device keys are loaded for each use.
	priv, pub := b.create(AKTemplate)
	b.ak, b.akPub = b.load(priv, pub), tpm2.Marshal(pub)
	// A TPM keeps transient objects across connections (swtpm has no
	// resource manager): flush them before the transport closes, so that
	// the next client of this TPM has its slots.
	t.Cleanup(func() {
		b.flush(b.ak.Handle)
		b.flush(b.srk.Handle)
	})
	return b
}

func (b *Board) parent() tpm2.AuthHandle {
	return tpm2.AuthHandle{Handle: b.srk.Handle, Name: b.srk.Name, Auth: tpm2.PasswordAuth(nil)}
}

// create creates a key from tmpl under the SRK.
func (b *Board) create(tmpl tpm2.TPMTPublic) (tpm2.TPM2BPrivate, tpm2.TPM2BPublic) {
	b.t.Helper()
	c, err := tpm2.Create{ParentHandle: b.parent(), InPublic: tpm2.New2B(tmpl)}.Execute(b.tr)
	if err != nil {
		b.t.Fatalf("create a key: %v", err)
	}
	return c.OutPrivate, c.OutPublic
}

// load loads a key made by create.
func (b *Board) load(priv tpm2.TPM2BPrivate, pub tpm2.TPM2BPublic) tpm2.NamedHandle {
	b.t.Helper()
	l, err := tpm2.Load{ParentHandle: b.parent(), InPrivate: priv, InPublic: pub}.Execute(b.tr)
	if err != nil {
		b.t.Fatalf("load a key: %v", err)
	}
	return tpm2.NamedHandle{Handle: l.ObjectHandle, Name: l.Name}
}

func (b *Board) flush(h tpm2.TPMHandle) {
	if _, err := (tpm2.FlushContext{FlushHandle: h}).Execute(b.tr); err != nil {
		b.t.Errorf("flush: %v", err)
	}
}

// ChallengeRequest is the board's request for a challenge.
func (b *Board) ChallengeRequest(board, hardwareID string) enrollapi.ChallengeRequest {
	return enrollapi.ChallengeRequest{Board: board, HardwareID: hardwareID, EKCert: b.EKCert, AKPublic: b.akPub}
}

// activate opens the challenge's credential with the EK (a policy
// session: PolicySecret on the endorsement hierarchy) for the AK.
func (b *Board) activate(ch *enrollapi.ChallengeResponse) ([]byte, error) {
	ekPolicy := func(tpm transport.TPM, handle tpm2.TPMISHPolicy, nonceTPM tpm2.TPM2BNonce) error {
		_, err := tpm2.PolicySecret{AuthHandle: tpm2.TPMRHEndorsement, PolicySession: handle, NonceTPM: nonceTPM}.Execute(tpm)
		return err
	}
	ek, err := tpm2.CreatePrimary{PrimaryHandle: tpm2.TPMRHEndorsement, InPublic: tpm2.New2B(tpm2.RSAEKTemplate)}.Execute(b.tr)
	if err != nil {
		return nil, err
	}
	defer b.flush(ek.ObjectHandle)
	rsp, err := tpm2.ActivateCredential{
		ActivateHandle: b.ak,
		KeyHandle:      tpm2.AuthHandle{Handle: ek.ObjectHandle, Name: ek.Name, Auth: tpm2.Policy(tpm2.TPMAlgSHA256, 16, ekPolicy)},
		CredentialBlob: tpm2.TPM2BIDObject{Buffer: ch.Credential},
		Secret:         tpm2.TPM2BEncryptedSecret{Buffer: ch.Secret},
	}.Execute(b.tr)
	if err != nil {
		return nil, err
	}
	return rsp.CertInfo.Buffer, nil
}

// Key is a device key made in the board's TPM.
type Key struct {
	b      *Board
	priv   tpm2.TPM2BPrivate
	pub2b  tpm2.TPM2BPublic
	Public []byte // TPM2B_PUBLIC
}

// NewKey makes a device key from tmpl (KeyTemplate, or a variant).
func (b *Board) NewKey(tmpl tpm2.TPMTPublic) *Key {
	b.t.Helper()
	priv, p := b.create(tmpl)
	return &Key{b: b, priv: priv, pub2b: p, Public: tpm2.Marshal(p)}
}

// loaded loads the key for f.
func (k *Key) loaded(f func(tpm2.NamedHandle)) {
	h := k.b.load(k.priv, k.pub2b)
	defer k.b.flush(h.Handle)
	f(h)
}

// CSR is a CSR naming nothing signed by s, and its PEM.
func CSR(t testing.TB, s crypto.Signer) (*x509.CertificateRequest, string) {
	t.Helper()
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{SignatureAlgorithm: x509.ECDSAWithSHA256}, s)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		t.Fatal(err)
	}
	return csr, string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))
}

// certify has the board's AK certify the key over qualifying data:
// TPM2B_ATTEST and TPMT_SIGNATURE.
func (b *Board) certify(k *Key, qualifying []byte) (info, sig []byte) {
	b.t.Helper()
	var rsp *tpm2.CertifyResponse
	var err error
	k.loaded(func(h tpm2.NamedHandle) {
		rsp, err = tpm2.Certify{
			ObjectHandle:   tpm2.AuthHandle{Handle: h.Handle, Name: h.Name, Auth: tpm2.PasswordAuth(nil)},
			SignHandle:     tpm2.AuthHandle{Handle: b.ak.Handle, Name: b.ak.Name, Auth: tpm2.PasswordAuth(nil)},
			QualifyingData: tpm2.TPM2BData{Buffer: qualifying},
			InScheme:       tpm2.TPMTSigScheme{Scheme: tpm2.TPMAlgNull},
		}.Execute(b.tr)
	})
	if err != nil {
		b.t.Fatalf("certify: %v", err)
	}
	return tpm2.Marshal(rsp.CertifyInfo), tpm2.Marshal(rsp.Signature)
}

// Answer is the whole attestation for a challenge: the credential opened,
// and the key certified for this CSR and hardware ID (as sent).
func (b *Board) Answer(ch *enrollapi.ChallengeResponse, k *Key, csr *x509.CertificateRequest, hardwareID string) *enrollapi.Attestation {
	b.t.Helper()
	activated, err := b.activate(ch)
	if err != nil {
		b.t.Fatalf("activate the credential: %v", err)
	}
	info, sig := b.certify(k, enrollapi.QualifyingData(ch.Nonce, csr.Raw, hardwareID))
	return &enrollapi.Attestation{Challenge: ch.ID, Activated: activated, KeyPublic: k.Public, CertifyInfo: info, Signature: sig}
}
