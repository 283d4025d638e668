// Package signedimage is the signed bundle of a provisioning image: a JWS
// statement binding format version, serial, generation, image SHA-256,
// image length and issue time, signed by the deployment's image signer
// (Ed25519, with its certificate chain in the x5c header), followed by the
// image itself, so that statement and image travel as one artifact. Core
// signs; the device verifies, streaming, before anything is installed.
//
// The format is specified in docs/image-format.md. This package links only
// the standard library, go.step.sm/crypto and the pki package, because the
// device binary links it.
package signedimage

import (
	"bytes"
	"crypto"
	"crypto/ed25519"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"go.step.sm/crypto/jose"
	"go.step.sm/crypto/pemutil"

	"github.com/fleetprov/prov/pki"
)

// Format constants; see docs/image-format.md.
const (
	// FormatVersion is the statement's format version.
	FormatVersion = 1
	// Magic opens every bundle.
	Magic = "PROVBNDL"
	// MediaType is the JWS "typ": a statement signed for anything else is
	// not a provisioning image statement.
	MediaType = "prov-image+jws"
	// MaxStatementSize bounds the JWS.
	MaxStatementSize = 64 << 10
	// DefaultMaxImageSize is the image cap when VerifyOptions gives none.
	DefaultMaxImageSize = 16 << 20
	headerSize          = len(Magic) + 4
	maxChain            = 4
)

// Errors of verification, one per reason a bundle is refused.
var (
	ErrMalformed         = errors.New("malformed bundle")
	ErrUnsupportedFormat = errors.New("unsupported bundle format version")
	ErrUntrustedSigner   = errors.New("untrusted image signer")
	ErrBadSignature      = errors.New("bad statement signature")
	ErrWrongDevice       = errors.New("bundle is for another device")
	ErrRollback          = errors.New("bundle generation is below the accepted high-water mark")
	ErrTooLarge          = errors.New("image larger than allowed")
	ErrTruncated         = errors.New("bundle truncated")
	ErrDigestMismatch    = errors.New("image digest does not match the statement")
)

// Statement is the signed payload.
type Statement struct {
	Format     int    `json:"format"`
	Serial     string `json:"serial"`
	Generation uint64 `json:"generation"`
	// SHA256 is the image digest, lower-case hex.
	SHA256 string `json:"sha256"`
	// Length is the image size in bytes.
	Length int64 `json:"length"`
	// IssuedAt is when the generation was made, whole seconds, UTC.
	IssuedAt time.Time `json:"issuedAt"`
}

type protectedHeader struct {
	Alg string   `json:"alg"`
	Typ string   `json:"typ"`
	X5c []string `json:"x5c"`
}

// Signer signs statements with the image signer's Ed25519 key.
//
// It writes the JWS compact serialization itself (RFC 7515 section 7.1,
// EdDSA as RFC 8037 defines it) rather than through go-jose: the protected
// header, with its ~1.4 KiB x5c chain, is the same for every statement, and
// go-jose serialises it twice per signature, which costs as much as the
// Ed25519 signature itself. Any JWS library verifies the result (see
// TestJOSEVerifies).
type Signer struct {
	key    ed25519.PrivateKey
	chain  []*x509.Certificate
	id     pki.Identity
	header string // base64url of the protected header, fixed per signer
}

// NewSigner checks that chain[0] is a signer identity with code-signing
// usage whose public key is key's, and prepares to sign.
func NewSigner(key ed25519.PrivateKey, chain []*x509.Certificate) (*Signer, error) {
	if len(chain) == 0 || len(chain) > maxChain {
		return nil, fmt.Errorf("image signer: want 1 to %d certificates, got %d", maxChain, len(chain))
	}
	leaf := chain[0]
	id, err := pki.IdentityOf(leaf)
	if err != nil {
		return nil, fmt.Errorf("image signer certificate: %w", err)
	}
	if id.Role != pki.RoleSigner {
		return nil, fmt.Errorf("image signer certificate is %s, not a signer identity", id)
	}
	pub, ok := leaf.PublicKey.(ed25519.PublicKey)
	if !ok || !pub.Equal(key.Public()) {
		return nil, fmt.Errorf("image signer: the key is not the Ed25519 key of %s", id)
	}
	hasCodeSigning := false
	for _, u := range leaf.ExtKeyUsage {
		hasCodeSigning = hasCodeSigning || u == x509.ExtKeyUsageCodeSigning
	}
	if !hasCodeSigning {
		return nil, fmt.Errorf("image signer certificate %s lacks the codeSigning usage", id)
	}
	h := protectedHeader{Alg: string(jose.EdDSA), Typ: MediaType, X5c: make([]string, len(chain))}
	for i, c := range chain {
		h.X5c[i] = base64.StdEncoding.EncodeToString(c.Raw)
	}
	hj, err := json.Marshal(h)
	if err != nil {
		return nil, fmt.Errorf("image signer: %w", err)
	}
	return &Signer{key: key, chain: chain, id: id, header: base64.RawURLEncoding.EncodeToString(hj)}, nil
}

// LoadSigner reads the signer's PEM certificate chain and PKCS#8 key (as
// prov-pki writes them). The key file must be readable by its owner only.
func LoadSigner(certFile, keyFile string) (*Signer, error) {
	certPEM, err := os.ReadFile(certFile) //nolint:gosec // operator's configuration
	if err != nil {
		return nil, fmt.Errorf("image signer certificate: %w", err)
	}
	chain, err := pki.ParseCertificates(certPEM)
	if err != nil {
		return nil, fmt.Errorf("image signer certificate %s: %w", certFile, err)
	}
	fi, err := os.Stat(keyFile)
	if err != nil {
		return nil, fmt.Errorf("image signer key: %w", err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("image signer key %s has mode %04o; it must be readable by its owner only (chmod 600)", keyFile, fi.Mode().Perm())
	}
	keyPEM, err := os.ReadFile(keyFile) //nolint:gosec // operator's configuration
	if err != nil {
		return nil, fmt.Errorf("image signer key: %w", err)
	}
	k, err := pemutil.ParseKey(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("image signer key %s: %w", keyFile, err)
	}
	key, ok := k.(ed25519.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("image signer key %s is %T, not Ed25519", keyFile, k)
	}
	return NewSigner(key, chain)
}

// Identity is the signer's identity.
func (s *Signer) Identity() pki.Identity { return s.id }

// began is when the whole chain became valid: the latest NotBefore, in
// whole UTC seconds.
func (s *Signer) began() time.Time {
	var t time.Time
	for _, c := range s.chain {
		if c.NotBefore.After(t) {
			t = c.NotBefore
		}
	}
	return t.UTC().Truncate(time.Second)
}

// Certificate is the signer's leaf certificate.
func (s *Signer) Certificate() *x509.Certificate { return s.chain[0] }

// Public is the signer's public key.
func (s *Signer) Public() crypto.PublicKey { return s.key.Public() }

// WithChain is the signer with the same key and another chain: its
// certificate renewed (same key, same identity, a new validity).
func (s *Signer) WithChain(chain []*x509.Certificate) (*Signer, error) {
	return NewSigner(s.key, chain)
}

// Sign completes the statement for image (format, digest, length; issue
// time in whole UTC seconds, never before the signer's chain began) and
// returns the bundle. Ed25519 is deterministic and the encoding canonical,
// so the same statement, image and signer give the same bundle bytes.
func (s *Signer) Sign(st Statement, image []byte) ([]byte, error) {
	if err := pki.ValidateSerial(st.Serial); err != nil {
		return nil, fmt.Errorf("sign image: %w", err)
	}
	sum := sha256.Sum256(image)
	st.Format = FormatVersion
	st.SHA256 = hex.EncodeToString(sum[:])
	st.Length = int64(len(image))
	st.IssuedAt = st.IssuedAt.UTC().Truncate(time.Second)
	// A device checks a bundle it keeps at the statement's issue time
	// (VerifyOptions.AtIssue). A generation made before this chain began
	// (signed after the signer's certificate was renewed or rotated, or
	// the intermediate re-issued) would verify when fetched and fail at
	// the next boot; its statement is dated when the chain began instead,
	// the earliest time this signer vouches for it.
	if began := s.began(); st.IssuedAt.Before(began) {
		st.IssuedAt = began
	}
	payload, err := json.Marshal(&st)
	if err != nil {
		return nil, fmt.Errorf("sign image: %w", err)
	}
	enc := base64.RawURLEncoding
	jwsLen := len(s.header) + 1 + enc.EncodedLen(len(payload)) + 1 + enc.EncodedLen(ed25519.SignatureSize)
	out := make([]byte, headerSize+jwsLen, headerSize+jwsLen+len(image))
	copy(out, Magic)
	binary.BigEndian.PutUint32(out[len(Magic):], uint32(jwsLen)) //nolint:gosec // a few KiB
	jws := out[headerSize:]
	n := copy(jws, s.header)
	jws[n] = '.'
	n++
	enc.Encode(jws[n:], payload)
	n += enc.EncodedLen(len(payload))
	sig := ed25519.Sign(s.key, jws[:n]) // the signing input: header "." payload
	jws[n] = '.'
	enc.Encode(jws[n+1:], sig)
	return append(out, image...), nil
}

// VerifyOptions say what a bundle must satisfy.
type VerifyOptions struct {
	// Roots is the pinned trust bundle.
	Roots *pki.TrustBundle
	// Serial is the verifying device's own serial.
	Serial string
	// MinGeneration is the high-water mark: the highest generation the
	// device has accepted. A lower generation is a rollback.
	MinGeneration uint64
	// Now is the clock; zero means time.Now().
	Now time.Time
	// Floor is the earliest time the device believes it is (its binary's
	// build time, the last accepted statement's issue time, what verified
	// chains proved); the signer's chain may raise it (see pki.Floor).
	Floor *pki.Floor
	// MaxImageSize caps the image; zero means DefaultMaxImageSize.
	MaxImageSize int64
	// AtIssue checks the signer's chain at the statement's issue time
	// instead of now: for a bundle accepted earlier and kept, whose bytes
	// are checked again at every boot. Its signer was valid when it
	// signed; the signer's certificate expiring later (or a signer
	// rotation) must not make a device lose its data.
	AtIssue bool
}

// Verified is a bundle that passed every check.
type Verified struct {
	Statement
	Signer pki.Identity
}

// Verify reads a bundle from r, checks its statement (structure, signer
// chain to the pinned root at the clock floor, signature, serial,
// generation, size) before reading any image byte, then copies the image
// to image while hashing it, and checks length and digest. It never reads
// past the signed length plus one byte. On any error the bytes written to
// image must be discarded.
func Verify(r io.Reader, image io.Writer, opts VerifyOptions) (*Verified, error) {
	v, err := readStatement(r, opts)
	if err != nil {
		return nil, err
	}
	h := sha256.New()
	n, err := io.CopyN(io.MultiWriter(image, h), r, v.Length)
	if err != nil {
		if n < v.Length && (errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF)) {
			return nil, fmt.Errorf("%w: image has %d of %d bytes", ErrTruncated, n, v.Length)
		}
		return nil, fmt.Errorf("read image: %w", err)
	}
	var one [1]byte
	if m, _ := io.ReadFull(r, one[:]); m > 0 {
		return nil, fmt.Errorf("%w: more bytes follow the %d signed", ErrTooLarge, v.Length)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != v.SHA256 {
		return nil, fmt.Errorf("%w: sha256 %s, signed %s", ErrDigestMismatch, got, v.SHA256)
	}
	return v, nil
}

// VerifyBytes is Verify for a bundle in memory; it returns the image.
func VerifyBytes(bundle []byte, opts VerifyOptions) (*Verified, []byte, error) {
	var img bytes.Buffer
	v, err := Verify(bytes.NewReader(bundle), &img, opts)
	if err != nil {
		return nil, nil, err
	}
	return v, img.Bytes(), nil
}

func readStatement(r io.Reader, opts VerifyOptions) (*Verified, error) {
	if opts.Roots == nil {
		return nil, errors.New("verify bundle: no trust bundle")
	}
	var hdr [headerSize]byte
	if n, err := io.ReadFull(r, hdr[:]); err != nil {
		if n == 0 && errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("%w: empty", ErrTruncated)
		}
		return nil, fmt.Errorf("%w: header: %d of %d bytes", ErrTruncated, n, headerSize)
	}
	if string(hdr[:len(Magic)]) != Magic {
		return nil, fmt.Errorf("%w: does not start with %q", ErrMalformed, Magic)
	}
	size := binary.BigEndian.Uint32(hdr[len(Magic):])
	if size == 0 || size > MaxStatementSize {
		return nil, fmt.Errorf("%w: statement size %d outside 1..%d", ErrMalformed, size, MaxStatementSize)
	}
	buf := make([]byte, size)
	if n, err := io.ReadFull(r, buf); err != nil {
		return nil, fmt.Errorf("%w: statement has %d of %d bytes", ErrTruncated, n, size)
	}
	st, signer, err := verifyJWS(string(buf), opts)
	if err != nil {
		return nil, err
	}
	if st.Serial != opts.Serial {
		return nil, fmt.Errorf("%w: signed for %q, this is %q", ErrWrongDevice, st.Serial, opts.Serial)
	}
	if st.Generation < opts.MinGeneration {
		return nil, fmt.Errorf("%w: generation %d < %d", ErrRollback, st.Generation, opts.MinGeneration)
	}
	limit := opts.MaxImageSize
	if limit <= 0 {
		limit = DefaultMaxImageSize
	}
	if st.Length > limit {
		return nil, fmt.Errorf("%w: %d bytes signed, at most %d accepted", ErrTooLarge, st.Length, limit)
	}
	return &Verified{Statement: *st, Signer: signer}, nil
}

// verifyJWS checks the compact JWS: canonical encoding, header, signer
// chain, signature, payload.
func verifyJWS(compact string, opts VerifyOptions) (*Statement, pki.Identity, error) {
	parts := strings.Split(compact, ".")
	if len(parts) != 3 {
		return nil, pki.Identity{}, fmt.Errorf("%w: statement is not a compact JWS", ErrMalformed)
	}
	raw := make([][]byte, 3)
	for i, p := range parts {
		// Only the canonical encoding: base64url without padding, no line
		// breaks, unused bits zero. Any other spelling of the same bytes
		// is refused, so the bytes signed are the only bytes accepted.
		b, err := base64.RawURLEncoding.Strict().DecodeString(p)
		if err != nil || base64.RawURLEncoding.EncodeToString(b) != p {
			return nil, pki.Identity{}, fmt.Errorf("%w: statement part %d is not canonical base64url", ErrMalformed, i+1)
		}
		raw[i] = b
	}
	var h protectedHeader
	if err := strictJSON(raw[0], &h); err != nil {
		return nil, pki.Identity{}, fmt.Errorf("%w: statement header: %w", ErrMalformed, err)
	}
	if h.Alg != string(jose.EdDSA) || h.Typ != MediaType || len(h.X5c) == 0 || len(h.X5c) > maxChain {
		return nil, pki.Identity{}, fmt.Errorf("%w: statement header alg %q typ %q with %d certificates; want EdDSA, %s, 1 to %d", ErrMalformed, h.Alg, h.Typ, len(h.X5c), MediaType, maxChain)
	}
	chain := make([]*x509.Certificate, len(h.X5c))
	for i, s := range h.X5c {
		der, err := base64.StdEncoding.Strict().DecodeString(s)
		if err != nil {
			return nil, pki.Identity{}, fmt.Errorf("%w: x5c[%d]: %w", ErrMalformed, i, err)
		}
		if chain[i], err = x509.ParseCertificate(der); err != nil {
			return nil, pki.Identity{}, fmt.Errorf("%w: x5c[%d]: %w", ErrMalformed, i, err)
		}
	}
	checkChain := func(at time.Time, floor *pki.Floor) (pki.Identity, error) {
		signer, err := opts.Roots.Verify(chain, pki.VerifyOptions{
			Time:     at,
			Floor:    floor,
			KeyUsage: x509.ExtKeyUsageCodeSigning,
			Roles:    []pki.Role{pki.RoleSigner},
		})
		if err != nil {
			return pki.Identity{}, fmt.Errorf("%w: %w", ErrUntrustedSigner, err)
		}
		return signer, nil
	}
	var signer pki.Identity
	if !opts.AtIssue { // the chain before anything it signed is looked at
		var err error
		if signer, err = checkChain(opts.Now, opts.Floor); err != nil {
			return nil, pki.Identity{}, err
		}
	}
	pub, ok := chain[0].PublicKey.(ed25519.PublicKey)
	if !ok {
		return nil, pki.Identity{}, fmt.Errorf("%w: signer %q has a %T key, not Ed25519", ErrUntrustedSigner, chain[0].Subject.CommonName, chain[0].PublicKey)
	}
	signingInput := compact[:len(parts[0])+1+len(parts[1])]
	if !ed25519.Verify(pub, []byte(signingInput), raw[2]) {
		return nil, pki.Identity{}, fmt.Errorf("%w: by %q", ErrBadSignature, chain[0].Subject.CommonName)
	}
	var st Statement
	if err := strictJSON(raw[1], &st); err != nil {
		return nil, pki.Identity{}, fmt.Errorf("%w: statement: %w", ErrMalformed, err)
	}
	if opts.AtIssue { // nothing of the statement is returned unless this holds
		var err error
		// At the issue time exactly: no floor may move this check later.
		if signer, err = checkChain(st.IssuedAt, nil); err != nil {
			return nil, pki.Identity{}, err
		}
	}
	if st.Format != FormatVersion {
		return nil, pki.Identity{}, fmt.Errorf("%w: %d (this verifier reads %d)", ErrUnsupportedFormat, st.Format, FormatVersion)
	}
	if pki.ValidateSerial(st.Serial) != nil || st.Length < 0 || len(st.SHA256) != 64 || strings.ToLower(st.SHA256) != st.SHA256 {
		return nil, pki.Identity{}, fmt.Errorf("%w: statement fields out of range", ErrMalformed)
	}
	if _, err := hex.DecodeString(st.SHA256); err != nil {
		return nil, pki.Identity{}, fmt.Errorf("%w: sha256 is not hex", ErrMalformed)
	}
	return &st, signer, nil
}

func strictJSON(b []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if dec.More() {
		return errors.New("data after the JSON object")
	}
	return nil
}
