package tpmkey

import (
	"fmt"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/fleetprov/prov/proxy/contract/enrollapi"
)

// The attestation at enrollment (enrollapi's challenge): the proxy trusts
// the endorsement key through its manufacturer's certificate, binds an
// attestation key to it by credential activation (only the TPM holding
// both can open the credential), and reads in the attestation key's
// certification of the device key that the CSR's key is resident here.

// EKCertificate reads the RSA 2048 endorsement key's certificate (DER) the
// manufacturer wrote into the TPM's NV memory.
func (t *TPM) EKCertificate() ([]byte, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	idx := tpm2.TPMHandle(enrollapi.EKCertIndexRSA)
	pub, err := tpm2.NVReadPublic{NVIndex: idx}.Execute(t.tr)
	if err != nil {
		return nil, fmt.Errorf("the TPM has no RSA endorsement key certificate at NV index %#x: %w", uint32(idx), classify(err))
	}
	nv, err := pub.NVPublic.Contents()
	if err != nil {
		return nil, fmt.Errorf("NV index %#x: %w", uint32(idx), err)
	}
	// NV reads are bounded by the TPM's buffer (TPM_PT_NV_BUFFER_MAX, at
	// least 512 on any TPM): read in chunks.
	const chunk = 512
	der := make([]byte, 0, nv.DataSize)
	for off := uint16(0); off < nv.DataSize; {
		n := min(nv.DataSize-off, chunk)
		rd, err := tpm2.NVRead{AuthHandle: tpm2.AuthHandle{Handle: idx, Name: pub.NVName, Auth: tpm2.PasswordAuth(nil)},
			NVIndex: tpm2.NamedHandle{Handle: idx, Name: pub.NVName}, Size: n, Offset: off}.Execute(t.tr)
		if err != nil {
			return nil, fmt.Errorf("read the endorsement key certificate: %w", classify(err))
		}
		der = append(der, rd.Data.Buffer...)
		off += n
	}
	return trimDER(der), nil
}

// trimDER drops the padding some manufacturers leave after the
// certificate in its NV index (the index's size is fixed).
func trimDER(b []byte) []byte {
	// A SEQUENCE with a long-form length of one or two bytes.
	if len(b) < 4 || b[0] != 0x30 {
		return b
	}
	var n, hdr int
	switch b[1] {
	case 0x81:
		n, hdr = int(b[2]), 3
	case 0x82:
		n, hdr = int(b[2])<<8|int(b[3]), 4
	default:
		return b
	}
	if hdr+n <= len(b) {
		return b[:hdr+n]
	}
	return b
}

// akTemplate is the attestation key: a restricted ECDSA P-256 signing key
// made in the TPM, which signs only structures the TPM made itself
// (TPM2_Certify's), so that its signature on a certification is the TPM's
// word.
var akTemplate = signingTemplate(true)

// AK is an attestation key loaded in the TPM, for one enrollment (it is
// not kept: the next enrollment makes another).
type AK struct {
	tpm    *TPM
	public tpm2.TPM2BPublic
	handle tpm2.TPMHandle
	name   tpm2.TPM2BName
}

// NewAK makes an attestation key under the storage root key and loads it.
func (t *TPM) NewAK() (*AK, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	var ak *AK
	err := t.underSRK(func(_ *tpm2.CreatePrimaryResponse, parent tpm2.AuthHandle) error {
		c, err := tpm2.Create{ParentHandle: parent, InPublic: tpm2.New2B(akTemplate)}.Execute(t.tr)
		if err != nil {
			return fmt.Errorf("create the attestation key: %w", classify(err))
		}
		l, err := tpm2.Load{ParentHandle: parent, InPrivate: c.OutPrivate, InPublic: c.OutPublic}.Execute(t.tr)
		if err != nil {
			return fmt.Errorf("load the attestation key: %w", classify(err))
		}
		ak = &AK{tpm: t, public: c.OutPublic, handle: l.ObjectHandle, name: l.Name}
		return nil
	})
	return ak, err
}

// Public is the attestation key's TPM2B_PUBLIC (ChallengeRequest.AKPublic).
func (ak *AK) Public() []byte { return tpm2.Marshal(ak.public) }

// ActivateCredential opens the proxy's credential (TPM2_MakeCredential to
// the endorsement key for this attestation key's name) with the
// endorsement key: what it returns proves the two keys in one TPM.
func (ak *AK) ActivateCredential(credential, secret []byte) ([]byte, error) {
	t := ak.tpm
	t.mu.Lock()
	defer t.mu.Unlock()
	ek, err := tpm2.CreatePrimary{PrimaryHandle: tpm2.TPMRHEndorsement, InPublic: tpm2.New2B(tpm2.RSAEKTemplate)}.Execute(t.tr)
	if err != nil {
		return nil, fmt.Errorf("the TPM's endorsement key: %w", classify(err))
	}
	defer t.flush(ek.ObjectHandle)
	// The EK's policy is PolicySecret on the endorsement hierarchy
	// (empty authorisation, as shipped).
	ekAuth := tpm2.Policy(tpm2.TPMAlgSHA256, 16, func(tr transport.TPM, h tpm2.TPMISHPolicy, nonce tpm2.TPM2BNonce) error {
		_, err := tpm2.PolicySecret{AuthHandle: tpm2.TPMRHEndorsement, PolicySession: h, NonceTPM: nonce}.Execute(tr)
		return err
	})
	rsp, err := tpm2.ActivateCredential{
		ActivateHandle: tpm2.AuthHandle{Handle: ak.handle, Name: ak.name, Auth: tpm2.PasswordAuth(nil)},
		KeyHandle:      tpm2.AuthHandle{Handle: ek.ObjectHandle, Name: ek.Name, Auth: ekAuth},
		CredentialBlob: tpm2.TPM2BIDObject{Buffer: credential},
		Secret:         tpm2.TPM2BEncryptedSecret{Buffer: secret},
	}.Execute(t.tr)
	if err != nil {
		return nil, fmt.Errorf("activate the proxy's credential: %w", classify(err))
	}
	return rsp.CertInfo.Buffer, nil
}

// Certify has the attestation key certify the device key with qualifying
// data (enrollapi.QualifyingData): the TPM2B_ATTEST and the TPMT_SIGNATURE
// over it.
func (ak *AK) Certify(k *Key, qualifying []byte) (attest, signature []byte, err error) {
	t := ak.tpm
	if k.tpm != t {
		return nil, nil, fmt.Errorf("certify: the key and the attestation key are in different TPM sessions")
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if k.stale() {
		if err := k.load(); err != nil {
			return nil, nil, err
		}
	}
	rsp, err := tpm2.Certify{
		ObjectHandle:   tpm2.AuthHandle{Handle: k.handle, Name: k.name, Auth: tpm2.PasswordAuth(nil)},
		SignHandle:     tpm2.AuthHandle{Handle: ak.handle, Name: ak.name, Auth: tpm2.PasswordAuth(nil)},
		QualifyingData: tpm2.TPM2BData{Buffer: qualifying},
		InScheme:       tpm2.TPMTSigScheme{Scheme: tpm2.TPMAlgNull},
	}.Execute(t.tr)
	if err != nil {
		return nil, nil, fmt.Errorf("certify the device key: %w", classify(err))
	}
	return tpm2.Marshal(rsp.CertifyInfo), tpm2.Marshal(rsp.Signature), nil
}

// Answer is the board's answer to the proxy's challenge ch for the CSR
// csrDER of device key k, sent with hardwareID exactly as the enrollment
// sends it: the credential opened with the endorsement key (an error
// wrapping ErrCredential if it does not open here) and k certified by the
// attestation key over enrollapi.QualifyingData.
func (ak *AK) Answer(ch *enrollapi.ChallengeResponse, k *Key, csrDER []byte, hardwareID string) (*enrollapi.Attestation, error) {
	activated, err := ak.ActivateCredential(ch.Credential, ch.Secret)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrCredential, err)
	}
	info, sig, err := ak.Certify(k, enrollapi.QualifyingData(ch.Nonce, csrDER, hardwareID))
	if err != nil {
		return nil, err
	}
	return &enrollapi.Attestation{Challenge: ch.ID, Activated: activated, KeyPublic: k.PublicArea(), CertifyInfo: info, Signature: sig}, nil
}

// Close unloads the attestation key.
func (ak *AK) Close() error {
	ak.tpm.mu.Lock()
	defer ak.tpm.mu.Unlock()
	ak.tpm.flush(ak.handle)
	return nil
}
