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
	"slices"
	"strings"
	"time"

	"go.step.sm/crypto/jose"
	"go.step.sm/crypto/pemutil"

	"github.com/fleetprov/prov/internal/untrusted"
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

// IssueTime is the issue time Sign writes for a generation made at t: t in
// whole UTC seconds, never before the signer's chain began. A device
// checks a bundle it keeps at the statement's issue time
// (VerifyOptions.AtIssue), and refuses an issue time outside the chain's
// validity (step 18). A generation made before this chain began (signed
// after the signer's certificate was renewed or rotated, or the
// intermediate re-issued) is dated when the chain began instead, the
// earliest time this signer vouches for it. The builder writes the same
// time into the image's /etc/prov/image.json.
func (s *Signer) IssueTime(t time.Time) time.Time {
	t = t.UTC().Truncate(time.Second)
	if began := s.began(); t.Before(began) {
		return began
	}
	return t
}

// Sign completes the statement for image (format, digest, length; issue
// time in whole UTC seconds, never before the signer's chain began) and
// returns the bundle. Ed25519 is deterministic and the encoding canonical,
// so the same statement, image and signer give the same bundle bytes.
func (s *Signer) Sign(st Statement, image []byte) ([]byte, error) {
	if err := pki.ValidateSerial(st.Serial); err != nil {
		return nil, fmt.Errorf("sign image: %w", err)
	}
	if st.Generation < 1 || st.Generation > maxInteger || int64(len(image)) > maxInteger {
		return nil, fmt.Errorf("sign image: generation %d is not 1 to 2^53-1", st.Generation)
	}
	sum := sha256.Sum256(image)
	st.Format = FormatVersion
	st.SHA256 = hex.EncodeToString(sum[:])
	st.Length = int64(len(image))
	st.IssuedAt = s.IssueTime(st.IssuedAt)
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
	// instead of now (step 13 is skipped, step 18 holds): for a bundle
	// accepted earlier and kept, whose bytes are checked again at every
	// boot. Its signer was valid when it
	// signed; the signer's certificate expiring later (or a signer
	// rotation) must not make a device lose its data.
	AtIssue bool
}

// Verified is a bundle that passed every check.
type Verified struct {
	Statement
	Signer pki.Identity
}

// Verify reads a bundle from r and runs the checks of docs/image-format.md,
// section 3, in their order: the statement (structure, signer chain to the
// pinned root at the clock floor, signature, members, serial, generation,
// size) before any image byte is read, then it copies the image to image
// while hashing it, and checks length and digest. It never reads past the
// signed length plus one byte. On any error the bytes written to image
// must be discarded. A refusal is an *Error naming its step and reason.
func Verify(r io.Reader, image io.Writer, opts VerifyOptions) (*Verified, error) {
	v, err := readStatement(r, opts)
	if err != nil {
		return nil, err
	}
	h := sha256.New()
	n, err := io.CopyN(io.MultiWriter(image, h), r, v.Length)
	if err != nil {
		if n < v.Length && (errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF)) {
			return nil, refusef(StepImage, "the image has %d of the %d bytes signed", n, v.Length)
		}
		return nil, fmt.Errorf("read image: %w", err)
	}
	var one [1]byte
	if m, _ := io.ReadFull(r, one[:]); m > 0 {
		return nil, refusef(StepTrailing, "more bytes follow the %d signed", v.Length)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != v.SHA256 {
		return nil, refusef(StepDigest, "the image's sha256 is %s, the statement's %s", got, v.SHA256)
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

// readStatement runs steps 1 to 21.
func readStatement(r io.Reader, opts VerifyOptions) (*Verified, error) {
	if opts.Roots == nil {
		return nil, errors.New("verify bundle: no trust bundle")
	}
	var hdr [headerSize]byte
	if n, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, refusef(StepPrefix, "%d of the %d bytes of magic and statement size", n, headerSize)
	}
	if string(hdr[:len(Magic)]) != Magic {
		return nil, refusef(StepMagic, "the bundle does not start with %q", Magic)
	}
	size := binary.BigEndian.Uint32(hdr[len(Magic):])
	if size == 0 || size > MaxStatementSize {
		return nil, refusef(StepStatementSize, "statement size %d bytes, not 1 to %d", size, MaxStatementSize)
	}
	buf := make([]byte, size)
	if n, err := io.ReadFull(r, buf); err != nil {
		return nil, refusef(StepStatement, "the statement has %d of its %d bytes", n, size)
	}
	st, signer, err := verifyJWS(string(buf), opts)
	if err != nil {
		return nil, err
	}
	if st.Serial != opts.Serial {
		return nil, refusef(StepDevice, "signed for %s, this is %s", st.Serial, opts.Serial)
	}
	if st.Generation < opts.MinGeneration {
		return nil, refusef(StepGeneration, "generation %d is below the high-water mark %d", st.Generation, opts.MinGeneration)
	}
	limit := opts.MaxImageSize
	if limit <= 0 {
		limit = DefaultMaxImageSize
	}
	if st.Length > limit {
		return nil, refusef(StepSizeLimit, "%d bytes of image signed, at most %d bytes accepted", st.Length, limit)
	}
	return &Verified{Statement: *st, Signer: signer}, nil
}

// The members of the protected header and of the statement, with their
// JSON types.
var (
	headerMembers    = map[string]jsonKind{"alg": kindString, "typ": kindString, "x5c": kindArray}
	statementMembers = map[string]jsonKind{
		"format": kindNumber, "serial": kindString, "generation": kindNumber,
		"sha256": kindString, "length": kindNumber, "issuedAt": kindString,
	}
)

// verifyJWS runs steps 5 to 18 on the compact JWS.
func verifyJWS(compact string, opts VerifyOptions) (*Statement, pki.Identity, error) {
	parts := strings.Split(compact, ".")
	if len(parts) != 3 {
		return nil, pki.Identity{}, refusef(StepCompact, "the statement has %d parts, not the 3 of a compact JWS", len(parts))
	}
	raw := make([][]byte, 3)
	for i, p := range parts {
		// Only the canonical encoding: base64url without padding, no line
		// breaks, unused bits zero. Any other spelling of the same bytes
		// is refused, so the bytes signed are the only bytes accepted.
		b, err := base64.RawURLEncoding.Strict().DecodeString(p)
		if err != nil || base64.RawURLEncoding.EncodeToString(b) != p {
			return nil, pki.Identity{}, refusef(StepCompact, "statement part %d is not canonical base64url", i+1)
		}
		raw[i] = b
	}
	h, err := parseObject(raw[0])
	if err != nil {
		return nil, pki.Identity{}, refusef(StepHeaderJSON, "the header: %w", err)
	}
	if err := members(h, headerMembers); err != nil {
		return nil, pki.Identity{}, refusef(StepHeaderMembers, "the header: %w", err)
	}
	for i, c := range h["x5c"].items {
		if c.kind != kindString {
			return nil, pki.Identity{}, refusef(StepHeaderMembers, "the header: x5c[%d] is a JSON %s, not a string", i, c.kind)
		}
	}
	if alg, typ := h["alg"].text, h["typ"].text; alg != string(jose.EdDSA) || typ != MediaType {
		return nil, pki.Identity{}, refusef(StepAlgorithm, "alg %q, typ %q; want EdDSA, %s", untrusted.Short(alg), untrusted.Short(typ), MediaType)
	}
	x5c := h["x5c"].items
	if len(x5c) == 0 || len(x5c) > maxChain {
		return nil, pki.Identity{}, refusef(StepCertificates, "x5c holds %d certificates, not 1 to %d", len(x5c), maxChain)
	}
	chain := make([]*x509.Certificate, len(x5c))
	for i, s := range x5c {
		der, err := base64.StdEncoding.Strict().DecodeString(s.text)
		if err != nil || base64.StdEncoding.EncodeToString(der) != s.text {
			return nil, pki.Identity{}, refusef(StepCertificates, "x5c[%d] is not canonical base64", i)
		}
		if chain[i], err = x509.ParseCertificate(der); err != nil {
			return nil, pki.Identity{}, refusef(StepCertificates, "x5c[%d]: %w", i, err)
		}
	}
	path, err := opts.Roots.IssuingOrder(chain)
	if err != nil {
		return nil, pki.Identity{}, Refuse(StepIssuingOrder, err)
	}
	p, err := opts.Roots.PathRules(path)
	if err != nil {
		return nil, pki.Identity{}, Refuse(StepPathRules, err)
	}
	signer, err := signerRules(chain[0], opts.Roots.TrustDomain())
	if err != nil {
		return nil, pki.Identity{}, Refuse(StepSignerRules, err)
	}
	if !opts.AtIssue { // a kept bundle's path is checked at its issue time (step 18)
		now := opts.Now
		if now.IsZero() {
			now = time.Now()
		}
		if err := p.At(now, opts.Floor); err != nil {
			return nil, pki.Identity{}, Refuse(StepValidity, err)
		}
	}
	signingInput := compact[:len(parts[0])+1+len(parts[1])]
	if !ed25519.Verify(chain[0].PublicKey.(ed25519.PublicKey), []byte(signingInput), raw[2]) { //nolint:forcetypeassert // signerRules checked it
		return nil, pki.Identity{}, refusef(StepSignature, "the signature is not %s's", signer)
	}
	st, err := parseStatement(raw[1])
	if err != nil {
		return nil, pki.Identity{}, err
	}
	if !p.Covers(st.IssuedAt) {
		return nil, pki.Identity{}, refusef(StepIssueTime, "issued at %s, when the signer's path was not valid (%s to %s)",
			st.IssuedAt.Format(time.RFC3339), p.NotBefore.UTC().Format(time.RFC3339), p.NotAfter.UTC().Format(time.RFC3339))
	}
	return st, signer, nil
}

// signerRules checks the signer's certificate itself (step 12): the
// identity spiffe://<trust domain>/signer/<name> as its only name,
// codeSigning named in its extended key usage, digitalSignature if it has
// a key usage, an Ed25519 key, not a CA.
func signerRules(leaf *x509.Certificate, trustDomain string) (pki.Identity, error) {
	id, err := pki.IdentityOf(leaf)
	if err != nil {
		return pki.Identity{}, err
	}
	switch {
	case id.TrustDomain != trustDomain:
		return pki.Identity{}, fmt.Errorf("%w: %s is not in %s", pki.ErrForeignTrustDomain, id, trustDomain)
	case id.Role != pki.RoleSigner:
		return pki.Identity{}, fmt.Errorf("%w: %s is not a signer", pki.ErrRoleNotAllowed, id)
	case len(leaf.DNSNames) > 0 || len(leaf.IPAddresses) > 0:
		return pki.Identity{}, fmt.Errorf("%w: %s has DNS or IP names", pki.ErrAmbiguousIdentity, id)
	case !slices.Contains(leaf.ExtKeyUsage, x509.ExtKeyUsageCodeSigning):
		return pki.Identity{}, fmt.Errorf("%w: %s does not name codeSigning in its extended key usage", pki.ErrKeyUsage, id)
	case leaf.KeyUsage != 0 && leaf.KeyUsage&x509.KeyUsageDigitalSignature == 0:
		return pki.Identity{}, fmt.Errorf("%w: %s lacks digitalSignature", pki.ErrKeyUsage, id)
	}
	if _, ok := leaf.PublicKey.(ed25519.PublicKey); !ok {
		return pki.Identity{}, fmt.Errorf("%s has a %T key, not Ed25519", id, leaf.PublicKey)
	}
	return id, nil
}

// parseStatement runs steps 15 to 17 on the payload.
func parseStatement(b []byte) (*Statement, error) {
	m, err := parseObject(b)
	if err != nil {
		return nil, refusef(StepPayloadJSON, "the statement: %w", err)
	}
	if f, ok := m["format"]; !ok {
		return nil, refusef(StepFormat, "the statement has no format (this verifier reads %d)", FormatVersion)
	} else if n, ok := integer(f); !ok || n != FormatVersion {
		return nil, refusef(StepFormat, "format %s (this verifier reads %d)", untrusted.Short(f.text), FormatVersion)
	}
	if err := members(m, statementMembers); err != nil {
		return nil, refusef(StepPayloadMembers, "the statement: %w", err)
	}
	st := Statement{Format: FormatVersion, Serial: m["serial"].text, SHA256: m["sha256"].text}
	if pki.ValidateSerial(st.Serial) != nil {
		return nil, refusef(StepPayloadMembers, "serial %q is not 10 lower-case hex digits", untrusted.Short(st.Serial))
	}
	if !isLowerHex(st.SHA256, 64) {
		return nil, refusef(StepPayloadMembers, "sha256 %q is not 64 lower-case hex digits", untrusted.Short(st.SHA256))
	}
	gen, ok := integer(m["generation"])
	if !ok || gen < 1 {
		return nil, refusef(StepPayloadMembers, "generation %s is not an integer from 1 to 2^53-1", untrusted.Short(m["generation"].text))
	}
	length, ok := integer(m["length"])
	if !ok {
		return nil, refusef(StepPayloadMembers, "length %s is not an integer from 0 to 2^53-1", untrusted.Short(m["length"].text))
	}
	st.Generation, st.Length = gen, int64(length) //nolint:gosec // at most 2^53-1
	if st.IssuedAt, err = ParseIssuedAt(m["issuedAt"].text); err != nil {
		return nil, Refuse(StepPayloadMembers, err)
	}
	return &st, nil
}

// IssuedAtLayout is the one spelling of an issue time: RFC 3339 in UTC
// with Z, whole seconds.
const IssuedAtLayout = "2006-01-02T15:04:05Z"

// ParseIssuedAt reads an issue time spelt exactly as IssuedAtLayout, from
// year 0001 on.
func ParseIssuedAt(s string) (time.Time, error) {
	t, err := time.Parse(IssuedAtLayout, s)
	if err != nil || len(s) != len(IssuedAtLayout) || t.Format(IssuedAtLayout) != s || t.Year() < 1 {
		return time.Time{}, fmt.Errorf("issuedAt %q is not RFC 3339 in UTC with Z and whole seconds (%s)", untrusted.Short(s), IssuedAtLayout)
	}
	return t, nil
}

func isLowerHex(s string, n int) bool {
	if len(s) != n {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}
