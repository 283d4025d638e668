// Package tpmkeytest is a stand-in for the proxy's half of the TPM
// attestation (the real verifier is the proxy's): it checks the
// endorsement key's certificate against a manufacturer's roots, makes the
// credential for the attestation key with go-tpm's CreateCredential, and
// checks an enrollment's attestation: the credential opened, the device
// key certified by the attestation key over the qualifying data, and the
// CSR's key the certified one. Tests of the device's side use it, alone
// or in front of a real proxy (Transport).
package tpmkeytest

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/google/go-tpm/tpm2"

	"github.com/fleetprov/prov/proxy/contract/enrollapi"
)

// Verifier is the stand-in. Its challenges are single use.
type Verifier struct {
	Roots, Intermediates *x509.CertPool
	mu                   sync.Mutex
	pending              map[string]*challenge
	n                    int
	// Attested counts the enrollments whose attestation verified.
	Attested int
}

type challenge struct {
	hardwareID     string
	secret, nonce  []byte
	akPub          *ecdsa.PublicKey
	akName, ekSPKI []byte
}

// New trusts the manufacturer roots in rootsFile and the intermediates in
// chainFile (PEM; swtpm.TPM's ManufacturerRoots and ManufacturerChain).
func New(rootsFile, chainFile string) (*Verifier, error) {
	v := &Verifier{Roots: x509.NewCertPool(), Intermediates: x509.NewCertPool(), pending: map[string]*challenge{}}
	for _, f := range []struct {
		path string
		pool *x509.CertPool
	}{{rootsFile, v.Roots}, {chainFile, v.Intermediates}} {
		data, err := os.ReadFile(f.path)
		if err != nil {
			return nil, err
		}
		if !f.pool.AppendCertsFromPEM(data) {
			return nil, fmt.Errorf("%s: no certificates", f.path)
		}
	}
	return v, nil
}

// Challenge checks a challenge request and makes its credential.
func (v *Verifier) Challenge(req enrollapi.ChallengeRequest) (*enrollapi.ChallengeResponse, error) {
	ek, err := x509.ParseCertificate(req.EKCert)
	if err != nil {
		return nil, fmt.Errorf("EK certificate: %w", err)
	}
	ek.UnhandledCriticalExtensions = nil // the TPM's SAN is a directory name Go does not handle
	if _, err := ek.Verify(x509.VerifyOptions{Roots: v.Roots, Intermediates: v.Intermediates, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return nil, fmt.Errorf("EK certificate: %w", err)
	}
	ekRSA, ok := ek.PublicKey.(*rsa.PublicKey)
	if !ok {
		return nil, fmt.Errorf("EK certificate: a %T key, want RSA", ek.PublicKey)
	}
	akArea, err := publicArea(req.AKPublic)
	if err != nil {
		return nil, fmt.Errorf("AK: %w", err)
	}
	if a := akArea.ObjectAttributes; !a.Restricted || !a.SignEncrypt || !a.FixedTPM || !a.FixedParent || !a.SensitiveDataOrigin || a.Decrypt {
		return nil, errors.New("AK: not a restricted signing key made in and bound to its TPM")
	}
	akPub, err := tpm2.Pub(*akArea)
	if err != nil {
		return nil, fmt.Errorf("AK: %w", err)
	}
	akECDSA, ok := akPub.(*ecdsa.PublicKey)
	if !ok {
		return nil, fmt.Errorf("AK: a %T key, want ECDSA", akPub)
	}
	akName, err := tpm2.ObjectName(akArea)
	if err != nil {
		return nil, fmt.Errorf("AK: %w", err)
	}
	ekTmpl := tpm2.RSAEKTemplate
	ekTmpl.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgRSA, &tpm2.TPM2BPublicKeyRSA{Buffer: ekRSA.N.Bytes()})
	kem, err := tpm2.ImportEncapsulationKey(&ekTmpl)
	if err != nil {
		return nil, fmt.Errorf("EK: %w", err)
	}
	c := &challenge{hardwareID: req.HardwareID, secret: random(32), nonce: random(32), akPub: akECDSA, akName: akName.Buffer, ekSPKI: ek.RawSubjectPublicKeyInfo}
	cred, secret, err := tpm2.CreateCredential(rand.Reader, kem, c.akName, c.secret)
	if err != nil {
		return nil, fmt.Errorf("credential: %w", err)
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	v.n++
	id := fmt.Sprintf("challenge-%d", v.n)
	v.pending[id] = c
	return &enrollapi.ChallengeResponse{ID: id, Credential: cred, Secret: secret, Nonce: c.nonce, Expires: time.Now().Add(time.Minute)}, nil
}

// Check checks an enrollment's attestation (and uses up its challenge);
// it returns the endorsement key's hash.
func (v *Verifier) Check(req enrollapi.EnrollRequest) (string, error) {
	a := req.Attestation
	if a == nil {
		return "", errors.New("no attestation")
	}
	v.mu.Lock()
	c, ok := v.pending[a.Challenge]
	delete(v.pending, a.Challenge)
	v.mu.Unlock()
	if !ok {
		return "", fmt.Errorf("challenge %q: unknown or used", a.Challenge)
	}
	if !bytes.Equal(a.Activated, c.secret) || req.HardwareID != c.hardwareID {
		return "", errors.New("the attestation key was not activated, or another board answers")
	}
	block, _ := pem.Decode([]byte(req.CSR))
	if block == nil {
		return "", errors.New("CSR: not PEM")
	}
	csr, err := x509.ParseCertificateRequest(block.Bytes)
	if err != nil {
		return "", fmt.Errorf("CSR: %w", err)
	}
	keyArea, err := publicArea(a.KeyPublic)
	if err != nil {
		return "", fmt.Errorf("device key: %w", err)
	}
	if at := keyArea.ObjectAttributes; !at.FixedTPM || !at.FixedParent || !at.SensitiveDataOrigin {
		return "", errors.New("device key: exportable or not made in the TPM")
	}
	keyPub, err := tpm2.Pub(*keyArea)
	if err != nil {
		return "", fmt.Errorf("device key: %w", err)
	}
	if k, ok := keyPub.(*ecdsa.PublicKey); !ok || !k.Equal(csr.PublicKey) {
		return "", errors.New("the CSR's key is not the certified one")
	}
	keyName, err := tpm2.ObjectName(keyArea)
	if err != nil {
		return "", err
	}
	attest, err := tpm2.Unmarshal[tpm2.TPM2BAttest](a.CertifyInfo)
	if err != nil {
		return "", fmt.Errorf("certify info: %w", err)
	}
	body, err := attest.Contents()
	if err != nil {
		return "", fmt.Errorf("certify info: %w", err)
	}
	ci, err := body.Attested.Certify()
	if err != nil || body.Type != tpm2.TPMSTAttestCertify {
		return "", fmt.Errorf("certify info: not a certification: %w", err)
	}
	if !bytes.Equal(body.ExtraData.Buffer, enrollapi.QualifyingData(c.nonce, block.Bytes, req.HardwareID)) {
		return "", errors.New("certify info: another challenge, CSR or board (qualifying data)")
	}
	if !bytes.Equal(ci.Name.Buffer, keyName.Buffer) {
		return "", errors.New("certify info: names another key")
	}
	sig, err := tpm2.Unmarshal[tpm2.TPMTSignature](a.Signature)
	if err != nil {
		return "", fmt.Errorf("signature: %w", err)
	}
	es, err := sig.Signature.ECDSA()
	if err != nil {
		return "", fmt.Errorf("signature: %w", err)
	}
	digest := sha256.Sum256(attest.Bytes())
	if !ecdsa.Verify(c.akPub, digest[:], new(big.Int).SetBytes(es.SignatureR.Buffer), new(big.Int).SetBytes(es.SignatureS.Buffer)) {
		return "", errors.New("signature: not the attestation key's")
	}
	v.mu.Lock()
	v.Attested++
	v.mu.Unlock()
	return enrollapi.EKHash(c.ekSPKI), nil
}

// Transport answers the challenge route itself and checks an
// enrollment's attestation before it passes it to next (the real proxy,
// which does not read it yet): a device enrolls with its key in a TPM
// through a real proxy, core and step-ca.
func (v *Verifier) Transport(next http.RoundTripper) http.RoundTripper {
	return roundTripper(func(req *http.Request) (*http.Response, error) {
		switch req.URL.Path {
		case enrollapi.RouteEnrollChallenge.Path:
			var cr enrollapi.ChallengeRequest
			if err := json.NewDecoder(req.Body).Decode(&cr); err != nil {
				return answer(req, http.StatusBadRequest, enrollapi.Error{Code: "bad_request", Message: err.Error()}), nil
			}
			ch, err := v.Challenge(cr)
			if err != nil {
				return answer(req, http.StatusForbidden, enrollapi.Error{Code: enrollapi.RuleAttestation.Code(), Message: err.Error()}), nil
			}
			return answer(req, http.StatusOK, ch), nil
		case enrollapi.RouteEnroll.Path:
			data, err := io.ReadAll(req.Body)
			if err != nil {
				return nil, err
			}
			var er enrollapi.EnrollRequest
			if err := json.Unmarshal(data, &er); err != nil {
				return answer(req, http.StatusBadRequest, enrollapi.Error{Code: "bad_request", Message: err.Error()}), nil
			}
			if _, err := v.Check(er); err != nil {
				return answer(req, http.StatusForbidden, enrollapi.Error{Code: enrollapi.RuleAttestation.Code(), Message: err.Error()}), nil
			}
			req = req.Clone(req.Context())
			req.Body, req.ContentLength = io.NopCloser(bytes.NewReader(data)), int64(len(data))
		}
		return next.RoundTrip(req)
	})
}

type roundTripper func(*http.Request) (*http.Response, error)

func (f roundTripper) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

func answer(req *http.Request, status int, v any) *http.Response {
	data, _ := json.Marshal(v) // wire types: cannot fail
	return &http.Response{StatusCode: status, Header: http.Header{"Content-Type": {"application/json"}}, Body: io.NopCloser(bytes.NewReader(data)),
		ContentLength: int64(len(data)), Request: req, Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1}
}

func publicArea(b []byte) (*tpm2.TPMTPublic, error) {
	p, err := tpm2.Unmarshal[tpm2.TPM2BPublic](b)
	if err != nil {
		return nil, err
	}
	return p.Contents()
}

func random(n int) []byte {
	b := make([]byte, n)
	_, _ = rand.Read(b) // crypto/rand does not fail
	return b
}
