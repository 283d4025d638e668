// Package attest is the factory proxy's TPM attestation verifier: it
// proves that a board's device key was made in, and cannot leave, the TPM
// whose endorsement key (EK) certificate chains to a configured
// manufacturer root.
//
// Two steps, as enrollapi describes them. Challenge checks the EK
// certificate and the attestation key's (AK's) public area and answers a
// credential only that TPM can open for that AK (TPM2_MakeCredential done
// in software: tpm2.CreateCredential to the EK) and a nonce; it keeps the
// challenge in memory, bounded in number, for a few minutes, under a
// random ID. Verify takes the board's answer with its CSR: the opened
// credential proves the AK is in the EK's TPM; the AK's TPM2_Certify of
// the device key over enrollapi.QualifyingData(nonce, CSR, hardware ID)
// proves the key is in that TPM, fixed to it, and bound to this one
// enrollment; the CSR's key must be the certified one. A challenge is good
// for one Verify, whatever its outcome. Every refusal is an *Error
// carrying one of the sentinels of errors.go.
//
// Challenges live in this proxy's memory: a board answers the proxy that
// challenged it (a restarted proxy forgets them, the board asks again).
package attest

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/google/go-tpm/tpm2"

	"github.com/fleetprov/prov/proxy/contract/enrollapi"
)

// Defaults of Options.
const (
	DefaultTTL = 5 * time.Minute
	// DefaultMax bounds the outstanding challenges (about 1 KiB each): a
	// line enrolls a few boards a second, and each answers within seconds.
	DefaultMax = 4096
)

// Options are the verifier's settings; zero values take the defaults.
type Options struct {
	TTL  time.Duration    // how long a challenge may be answered
	Max  int              // how many challenges may be outstanding
	Now  func() time.Time // the clock (tests)
	Rand io.Reader        // randomness (crypto/rand)
}

// Verifier verifies attestations against a set of manufacturer roots.
type Verifier struct {
	roots, inters *x509.CertPool
	o             Options

	mu      sync.Mutex
	pending map[string]*challenge
}

// challenge is what the proxy keeps of one challenge.
type challenge struct {
	board   string // who asked (the caller's key of the board)
	ekHash  string
	ak      *tpm2.TPMTPublic
	secret  []byte
	nonce   []byte
	expires time.Time
	used    bool
}

// Result is what a verified attestation proves: the device key is in the
// TPM whose endorsement key EKHash names (enrollapi.EKHash).
type Result struct {
	EKHash string
}

// Load reads the manufacturer roots file (PEM): its self-signed
// certificates are the roots, the others are intermediates EK
// certificates may chain through (the device sends its EK certificate
// alone, as the TPM holds it).
func Load(path string, o Options) (*Verifier, error) {
	data, err := os.ReadFile(path) //nolint:gosec // operator's configuration
	if err != nil {
		return nil, fmt.Errorf("manufacturer roots: %w", err)
	}
	v, err := New(data, o)
	if err != nil {
		return nil, fmt.Errorf("manufacturer roots %s: %w", path, err)
	}
	return v, nil
}

// New is Load from the file's content.
func New(rootsPEM []byte, o Options) (*Verifier, error) {
	if o.TTL <= 0 {
		o.TTL = DefaultTTL
	}
	if o.Max <= 0 {
		o.Max = DefaultMax
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Rand == nil {
		o.Rand = rand.Reader
	}
	v := &Verifier{roots: x509.NewCertPool(), inters: x509.NewCertPool(), o: o, pending: map[string]*challenge{}}
	nroots := 0
	for block, rest := pem.Decode(rootsPEM); block != nil; block, rest = pem.Decode(rest) {
		if block.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, err
		}
		if bytes.Equal(c.RawSubject, c.RawIssuer) && c.CheckSignatureFrom(c) == nil {
			v.roots.AddCert(c)
			nroots++
		} else {
			v.inters.AddCert(c)
		}
	}
	if nroots == 0 {
		return nil, errors.New("no self-signed root certificate in it")
	}
	return v, nil
}

// Challenge checks a board's EK certificate and AK and makes its
// challenge; board is the caller's key of the board (its canonical
// hardware ID), which the answer must come with.
func (v *Verifier) Challenge(req enrollapi.ChallengeRequest, board string) (*enrollapi.ChallengeResponse, error) {
	now := v.o.Now()
	ek, err := v.checkEK(req.EKCert, now)
	if err != nil {
		return nil, err
	}
	ak, akName, err := parseAK(req.AKPublic)
	if err != nil {
		return nil, err
	}
	ekPub, err := ekPublic(ek.PublicKey.(*rsa.PublicKey))
	if err != nil {
		return nil, fail(ErrUntrustedEK, err.Error())
	}
	secret, nonce, id := make([]byte, 32), make([]byte, 32), make([]byte, 16)
	for _, b := range [][]byte{secret, nonce, id} {
		if _, err := io.ReadFull(v.o.Rand, b); err != nil {
			return nil, fmt.Errorf("randomness: %w", err)
		}
	}
	credential, encSecret, err := tpm2.CreateCredential(v.o.Rand, ekPub, akName, secret)
	if err != nil {
		return nil, fmt.Errorf("make the credential: %w", err)
	}
	c := &challenge{board: board, ekHash: enrollapi.EKHash(ek.RawSubjectPublicKeyInfo), ak: ak, secret: secret, nonce: nonce, expires: now.Add(v.o.TTL)}
	key := hex.EncodeToString(id)
	if err := v.keep(key, c, now); err != nil {
		return nil, err
	}
	return &enrollapi.ChallengeResponse{ID: key, Credential: credential, Secret: encSecret, Nonce: nonce, Expires: c.expires}, nil
}

// keep stores a challenge, forgetting expired ones when full.
func (v *Verifier) keep(key string, c *challenge, now time.Time) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if len(v.pending) >= v.o.Max {
		for k, old := range v.pending {
			if !now.Before(old.expires) {
				delete(v.pending, k)
			}
		}
	}
	if len(v.pending) >= v.o.Max {
		return fail(ErrBusy, fmt.Sprintf("%d outstanding; retry in a few seconds", len(v.pending)))
	}
	v.pending[key] = c
	return nil
}

// take returns the challenge key names for board, marking it used: a
// challenge is answered once, whatever the outcome, so its secret cannot
// be guessed at.
func (v *Verifier) take(key, board string, now time.Time) (*challenge, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	c, ok := v.pending[key]
	switch {
	case !ok:
		return nil, fail(ErrUnknownChallenge, "ask for a new challenge")
	case c.board != board:
		return nil, fail(ErrUnknownChallenge, "it was issued for another board")
	case !now.Before(c.expires):
		delete(v.pending, key)
		return nil, fail(ErrExpiredChallenge, "expired at "+c.expires.UTC().Format(time.RFC3339))
	case c.used:
		return nil, fail(ErrReplayed, "")
	}
	// Kept, used, until it expires, so that a replay is told apart from
	// an unknown challenge.
	c.used = true
	return c, nil
}

// Verify checks a board's answer to its challenge with the CSR it sent and
// the hardware ID exactly as it sent it (the qualifying data's), for the
// board named as at Challenge.
func (v *Verifier) Verify(att *enrollapi.Attestation, board string, csr *x509.CertificateRequest, hardwareID string) (*Result, error) {
	c, err := v.take(att.Challenge, board, v.o.Now())
	if err != nil {
		return nil, err
	}
	if subtle.ConstantTimeCompare(att.Activated, c.secret) != 1 {
		return nil, fail(ErrNotActivated, "the activated credential is not the challenge's secret")
	}
	key, keyName, err := parseDeviceKey(att.KeyPublic)
	if err != nil {
		return nil, err
	}
	info, err := checkCertify(c.ak, att.CertifyInfo, att.Signature)
	if err != nil {
		return nil, err
	}
	if info.Type != tpm2.TPMSTAttestCertify {
		return nil, fail(ErrNotCertified, "the attestation is not a TPM2_Certify")
	}
	certified, err := info.Attested.Certify()
	if err != nil {
		return nil, fail(ErrNotCertified, "the attestation is not a TPM2_Certify")
	}
	if !bytes.Equal(certified.Name.Buffer, keyName) {
		return nil, fail(ErrNotCertified, "the certification names another key than keyPublic")
	}
	if !bytes.Equal(info.ExtraData.Buffer, enrollapi.QualifyingData(c.nonce, csr.Raw, hardwareID)) {
		return nil, fail(ErrNotCertified, "the certification is not for this challenge, CSR and hardware ID")
	}
	if !key.Equal(csr.PublicKey) {
		return nil, fail(ErrKeyMismatch, "")
	}
	return &Result{EKHash: c.ekHash}, nil
}

// checkEK parses the EK certificate, accepting the TPM's critical subject
// alternative name (the TCG manufacturer, model and version attributes,
// which Go does not handle) and nothing else unhandled, and verifies its
// chain to the roots at now.
func (v *Verifier) checkEK(der []byte, now time.Time) (*x509.Certificate, error) {
	c, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fail(ErrUntrustedEK, "not a certificate: "+err.Error())
	}
	c.UnhandledCriticalExtensions = slices.DeleteFunc(c.UnhandledCriticalExtensions, func(id asn1.ObjectIdentifier) bool {
		return id.Equal(oidSAN) && tcgSAN(c) == nil
	})
	if len(c.UnhandledCriticalExtensions) > 0 {
		return nil, fail(ErrUntrustedEK, fmt.Sprintf("unhandled critical extensions %v", c.UnhandledCriticalExtensions))
	}
	if _, err := c.Verify(x509.VerifyOptions{Roots: v.roots, Intermediates: v.inters, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return nil, fail(ErrUntrustedEK, err.Error())
	}
	k, ok := c.PublicKey.(*rsa.PublicKey)
	if !ok || k.N.BitLen() != 2048 || k.E != 65537 {
		return nil, fail(ErrUntrustedEK, fmt.Sprintf("a %T key; want the RSA 2048 endorsement key (exponent 65537)", c.PublicKey))
	}
	return c, nil
}

var (
	oidSAN = asn1.ObjectIdentifier{2, 5, 29, 17}
	// The TCG's TPM manufacturer, model and version attributes (TCG EK
	// Credential Profile, 3.2.9).
	oidsTCG = []asn1.ObjectIdentifier{{2, 23, 133, 2, 1}, {2, 23, 133, 2, 2}, {2, 23, 133, 2, 3}}
)

// tcgSAN checks that the certificate's subject alternative name is
// directory names of TCG attributes alone.
func tcgSAN(c *x509.Certificate) error {
	for _, ext := range c.Extensions {
		if !ext.Id.Equal(oidSAN) {
			continue
		}
		var names asn1.RawValue
		if rest, err := asn1.Unmarshal(ext.Value, &names); err != nil || len(rest) > 0 || names.Tag != asn1.TagSequence {
			return errors.New("malformed subject alternative name")
		}
		for b := names.Bytes; len(b) > 0; {
			var gn asn1.RawValue
			var err error
			if b, err = asn1.Unmarshal(b, &gn); err != nil {
				return err
			}
			if gn.Class != asn1.ClassContextSpecific || gn.Tag != 4 || !gn.IsCompound {
				return errors.New("a subject alternative name other than a directory name")
			}
			var rdns pkix.RDNSequence
			if rest, err := asn1.Unmarshal(gn.Bytes, &rdns); err != nil || len(rest) > 0 {
				return errors.New("malformed directory name")
			}
			for _, rdn := range rdns {
				for _, atv := range rdn {
					if !slices.ContainsFunc(oidsTCG, atv.Type.Equal) {
						return fmt.Errorf("attribute %v is not a TCG TPM attribute", atv.Type)
					}
				}
			}
		}
		return nil
	}
	return errors.New("no subject alternative name")
}

// ekPublic is the EK's public area as the TPM makes it: the TCG default
// RSA EK template with the certificate's modulus, so that the credential's
// symmetric parameters and name algorithm are the TPM's.
func ekPublic(k *rsa.PublicKey) (tpm2.LabeledEncapsulationKey, error) {
	pub := tpm2.RSAEKTemplate
	pub.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgRSA, &tpm2.TPM2BPublicKeyRSA{Buffer: k.N.FillBytes(make([]byte, 256))})
	return tpm2.ImportEncapsulationKey(&pub)
}

// parsePublic parses a TPM2B_PUBLIC strictly (nothing after it, and in its
// canonical encoding, so that its name is the hash of what was parsed) and
// returns it with its name (SHA-256 name algorithm only).
func parsePublic(b []byte) (*tpm2.TPMTPublic, []byte, error) {
	outer, err := tpm2.Unmarshal[tpm2.TPM2BPublic](b)
	if err != nil {
		return nil, nil, err
	}
	pub, err := outer.Contents()
	if err != nil {
		return nil, nil, err
	}
	if !bytes.Equal(tpm2.Marshal(*outer), b) || !bytes.Equal(tpm2.Marshal(pub), outer.Bytes()) {
		return nil, nil, errors.New("trailing or non-canonical bytes")
	}
	if pub.NameAlg != tpm2.TPMAlgSHA256 {
		return nil, nil, fmt.Errorf("name algorithm %v; want SHA-256", pub.NameAlg)
	}
	name, err := tpm2.ObjectName(pub)
	if err != nil {
		return nil, nil, err
	}
	return pub, name.Buffer, nil
}

// parseAK checks the AK's public area: a restricted signing key, fixed
// to the TPM and made in it, ECDSA P-256 or RSA 2048 (PKCS#1 v1.5 or PSS)
// with SHA-256.
func parseAK(b []byte) (*tpm2.TPMTPublic, []byte, error) {
	ak, name, err := parsePublic(b)
	if err != nil {
		return nil, nil, fail(ErrBadAK, "akPublic: "+err.Error())
	}
	a := ak.ObjectAttributes
	if !a.FixedTPM || !a.FixedParent || !a.SensitiveDataOrigin || !a.Restricted || !a.SignEncrypt || a.Decrypt {
		return nil, nil, fail(ErrBadAK, "want fixedTPM, fixedParent, sensitiveDataOrigin, restricted, sign and not decrypt")
	}
	if _, err := akScheme(ak); err != nil {
		return nil, nil, fail(ErrBadAK, err.Error())
	}
	return ak, name, nil
}

// akScheme is the AK's signature scheme, if supported.
func akScheme(ak *tpm2.TPMTPublic) (tpm2.TPMAlgID, error) {
	switch ak.Type {
	case tpm2.TPMAlgECC:
		p, err := ak.Parameters.ECCDetail()
		if err != nil {
			return 0, err
		}
		if p.CurveID != tpm2.TPMECCNistP256 || p.Scheme.Scheme != tpm2.TPMAlgECDSA {
			return 0, errors.New("an ECC attestation key must be P-256 ECDSA")
		}
		d, err := p.Scheme.Details.ECDSA()
		if err != nil || d.HashAlg != tpm2.TPMAlgSHA256 {
			return 0, errors.New("an ECC attestation key must sign with SHA-256")
		}
		return tpm2.TPMAlgECDSA, nil
	case tpm2.TPMAlgRSA:
		p, err := ak.Parameters.RSADetail()
		if err != nil {
			return 0, err
		}
		if p.KeyBits != 2048 {
			return 0, errors.New("an RSA attestation key must be 2048 bits")
		}
		var hash tpm2.TPMIAlgHash
		switch p.Scheme.Scheme {
		case tpm2.TPMAlgRSASSA:
			d, derr := p.Scheme.Details.RSASSA()
			if derr == nil {
				hash = d.HashAlg
			}
		case tpm2.TPMAlgRSAPSS:
			d, derr := p.Scheme.Details.RSAPSS()
			if derr == nil {
				hash = d.HashAlg
			}
		default:
			return 0, errors.New("an RSA attestation key must be RSASSA or RSAPSS")
		}
		if hash != tpm2.TPMAlgSHA256 {
			return 0, errors.New("an RSA attestation key must sign with SHA-256")
		}
		return p.Scheme.Scheme, nil
	}
	return 0, fmt.Errorf("an attestation key of type %v", ak.Type)
}

// parseDeviceKey checks the device key's public area: fixed to the TPM
// and made in it, an unrestricted ECC P-256 signing key.
func parseDeviceKey(b []byte) (*ecdsa.PublicKey, []byte, error) {
	pub, name, err := parsePublic(b)
	if err != nil {
		return nil, nil, fail(ErrBadKey, "keyPublic: "+err.Error())
	}
	a := pub.ObjectAttributes
	if !a.FixedTPM || !a.FixedParent || !a.SensitiveDataOrigin {
		return nil, nil, fail(ErrExportable, fmt.Sprintf("fixedTPM %t, fixedParent %t, sensitiveDataOrigin %t", a.FixedTPM, a.FixedParent, a.SensitiveDataOrigin))
	}
	if !a.SignEncrypt || a.Decrypt || a.Restricted || pub.Type != tpm2.TPMAlgECC {
		return nil, nil, fail(ErrBadKey, "want an unrestricted signing key, not decrypt")
	}
	p, err := pub.Parameters.ECCDetail()
	if err != nil || p.CurveID != tpm2.TPMECCNistP256 {
		return nil, nil, fail(ErrBadKey, "want curve P-256")
	}
	pt, err := pub.Unique.ECC()
	if err != nil {
		return nil, nil, fail(ErrBadKey, err.Error())
	}
	k, err := tpm2.ECDSAPub(p, pt)
	if err != nil || !k.Curve.IsOnCurve(k.X, k.Y) { //nolint:staticcheck // the point comes from the wire: check it
		return nil, nil, fail(ErrBadKey, "the point is not on P-256")
	}
	return k, name, nil
}

// checkCertify verifies the AK's signature over the TPM2B_ATTEST and
// parses it; it must be TPM-generated (TPM_GENERATED_VALUE).
func checkCertify(ak *tpm2.TPMTPublic, attest, signature []byte) (*tpm2.TPMSAttest, error) {
	outer, err := tpm2.Unmarshal[tpm2.TPM2BAttest](attest)
	if err != nil || !bytes.Equal(tpm2.Marshal(*outer), attest) {
		return nil, fail(ErrNotCertified, "certifyInfo is not a TPM2B_ATTEST")
	}
	sig, err := tpm2.Unmarshal[tpm2.TPMTSignature](signature)
	if err != nil || !bytes.Equal(tpm2.Marshal(*sig), signature) {
		return nil, fail(ErrNotCertified, "signature is not a TPMT_SIGNATURE")
	}
	digest := sha256.Sum256(outer.Bytes())
	if err := verifySignature(ak, sig, digest[:]); err != nil {
		return nil, fail(ErrNotCertified, "the attestation key's signature does not verify: "+err.Error())
	}
	info, err := outer.Contents() // fails unless the magic is TPM_GENERATED_VALUE
	if err != nil || info.Magic != tpm2.TPMGeneratedValue {
		return nil, fail(ErrNotCertified, "certifyInfo was not generated by a TPM")
	}
	return info, nil
}

// verifySignature checks sig over digest (SHA-256) by the AK, in the
// AK's own scheme.
func verifySignature(ak *tpm2.TPMTPublic, sig *tpm2.TPMTSignature, digest []byte) error {
	scheme, err := akScheme(ak)
	if err != nil {
		return err
	}
	if sig.SigAlg != scheme {
		return fmt.Errorf("signature algorithm %v, the key's is %v", sig.SigAlg, scheme)
	}
	pub, err := tpm2.Pub(*ak)
	if err != nil {
		return err
	}
	switch scheme {
	case tpm2.TPMAlgECDSA:
		s, err := sig.Signature.ECDSA()
		if err != nil || s.Hash != tpm2.TPMAlgSHA256 {
			return errors.New("not an ECDSA SHA-256 signature")
		}
		k, ok := pub.(*ecdsa.PublicKey)
		if !ok || !ecdsa.Verify(k, digest, new(big.Int).SetBytes(s.SignatureR.Buffer), new(big.Int).SetBytes(s.SignatureS.Buffer)) {
			return errors.New("bad ECDSA signature")
		}
	case tpm2.TPMAlgRSASSA, tpm2.TPMAlgRSAPSS:
		var s *tpm2.TPMSSignatureRSA
		if scheme == tpm2.TPMAlgRSASSA {
			s, err = sig.Signature.RSASSA()
		} else {
			s, err = sig.Signature.RSAPSS()
		}
		if err != nil || s.Hash != tpm2.TPMAlgSHA256 {
			return errors.New("not an RSA SHA-256 signature")
		}
		k, ok := pub.(*rsa.PublicKey)
		if !ok {
			return errors.New("not an RSA key")
		}
		if scheme == tpm2.TPMAlgRSASSA {
			return rsa.VerifyPKCS1v15(k, crypto.SHA256, digest, s.Sig.Buffer)
		}
		return rsa.VerifyPSS(k, crypto.SHA256, digest, s.Sig.Buffer, &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthAuto})
	}
	return nil
}

// Outstanding is how many challenges are kept (answered ones until they
// expire).
func (v *Verifier) Outstanding() int {
	v.mu.Lock()
	defer v.mu.Unlock()
	return len(v.pending)
}
