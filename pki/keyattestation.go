package pki

import (
	"bytes"
	"crypto/x509"
	"encoding/asn1"
	"errors"
	"fmt"
	"regexp"
	"strings"

	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"
)

// The certificate policy of a device certificate whose key the proxy found
// resident in a TPM (attested at enrollment: docs/operations.md, "What a
// device certificate says of its key"). Its OID is minted under 2.25 from a
// UUID (ITU-T X.667), so it needs no registry; Go, OpenSSL and browsers
// read it in certificatePolicies (Go's x509.OID holds its large arc, which
// an extension's own ID could not). The policy carries a user notice whose
// text names the endorsement key: TPMNoticePrefix and the SHA-256 of the
// endorsement key certificate's SubjectPublicKeyInfo, hex, which `openssl
// x509 -text` shows as it is.
const (
	TPMKeyPolicyOID = "2.25.168877005083990836446111088824927958707"
	TPMNoticePrefix = "TPM-resident key; endorsement key SHA-256 "
)

// TPMKeyPolicy is TPMKeyPolicyOID.
var TPMKeyPolicy = mustOID(TPMKeyPolicyOID)

func mustOID(s string) x509.OID {
	o, err := x509.ParseOID(s)
	if err != nil {
		panic(err)
	}
	return o
}

var (
	oidCertificatePolicies = asn1.ObjectIdentifier{2, 5, 29, 32}
	oidUserNotice          = asn1.ObjectIdentifier{1, 3, 6, 1, 5, 5, 7, 2, 2}
	ekHashPattern          = regexp.MustCompile(`^[0-9a-f]{64}$`)
)

// ErrBadKeyAttestation: a certificate carries the TPM key policy in a form
// this package did not write.
var ErrBadKeyAttestation = errors.New("malformed TPM key policy")

// KeyAttestation is what a device certificate says of its key.
type KeyAttestation struct {
	// TPM: the proxy verified at enrollment that the key is resident in
	// a TPM whose endorsement key is EKSHA256.
	TPM      bool
	EKSHA256 string
}

// KeyAttestationOf reads the TPM key policy of cert: none is a software
// key (no error); one that is there must name an endorsement key.
func KeyAttestationOf(cert *x509.Certificate) (KeyAttestation, error) {
	if !slicesContainsOID(cert.Policies, TPMKeyPolicy) {
		return KeyAttestation{}, nil
	}
	want, err := TPMKeyPolicy.MarshalBinary()
	if err != nil {
		return KeyAttestation{}, err
	}
	for _, ext := range cert.Extensions {
		if !ext.Id.Equal(oidCertificatePolicies) {
			continue
		}
		text, err := noticeOf(ext.Value, want)
		if err != nil {
			return KeyAttestation{}, fmt.Errorf("%w: %w", ErrBadKeyAttestation, err)
		}
		ek, ok := strings.CutPrefix(text, TPMNoticePrefix)
		if !ok || !ekHashPattern.MatchString(ek) {
			return KeyAttestation{}, fmt.Errorf("%w: notice %q does not name an endorsement key", ErrBadKeyAttestation, text)
		}
		return KeyAttestation{TPM: true, EKSHA256: ek}, nil
	}
	return KeyAttestation{}, fmt.Errorf("%w: no certificatePolicies extension", ErrBadKeyAttestation)
}

func slicesContainsOID(list []x509.OID, o x509.OID) bool {
	for _, p := range list {
		if p.Equal(o) {
			return true
		}
	}
	return false
}

// noticeOf returns the explicit text of the user notice of the policy
// whose OID body is want, in a certificatePolicies extension's value:
// SEQUENCE OF PolicyInformation { policyIdentifier, SEQUENCE OF
// PolicyQualifierInfo { id-qt-unotice, UserNotice { explicitText } } }.
func noticeOf(value, want []byte) (string, error) {
	in := cryptobyte.String(value)
	var policies cryptobyte.String
	if !in.ReadASN1(&policies, cbasn1.SEQUENCE) || !in.Empty() {
		return "", errors.New("certificatePolicies is not a SEQUENCE")
	}
	for !policies.Empty() {
		var info, id cryptobyte.String
		if !policies.ReadASN1(&info, cbasn1.SEQUENCE) || !info.ReadASN1(&id, cbasn1.OBJECT_IDENTIFIER) {
			return "", errors.New("a PolicyInformation is malformed")
		}
		if !bytes.Equal(id, want) {
			continue
		}
		var quals, qual cryptobyte.String
		var qid asn1.ObjectIdentifier
		if !info.ReadASN1(&quals, cbasn1.SEQUENCE) || !quals.ReadASN1(&qual, cbasn1.SEQUENCE) || !qual.ReadASN1ObjectIdentifier(&qid) || !qid.Equal(oidUserNotice) {
			return "", errors.New("the policy has no user notice")
		}
		var notice, text cryptobyte.String
		if !qual.ReadASN1(&notice, cbasn1.SEQUENCE) || !notice.ReadASN1(&text, cbasn1.UTF8String) || !notice.Empty() {
			return "", errors.New("the user notice has no UTF8String explicit text")
		}
		return string(text), nil
	}
	return "", errors.New("the policy is not in certificatePolicies")
}
