package signedimage_test

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"go.step.sm/crypto/jose"

	"github.com/fleetprov/prov/pki"
	"github.com/fleetprov/prov/pki/pkitest"
	"github.com/fleetprov/prov/pki/signedimage"
)

const serial = "1a2b3c4d5e"

type fixture struct {
	ca     *pkitest.CA
	roots  *pki.TrustBundle
	signer *signedimage.Signer
	key    ed25519.PrivateKey
	chain  []*x509.Certificate
}

func newFixture(t testing.TB, spec pkitest.LeafSpec) *fixture {
	t.Helper()
	ca := pkitest.NewCA(t, "fleet.test")
	return fixtureFrom(t, ca, spec)
}

func fixtureFrom(t testing.TB, ca *pkitest.CA, spec pkitest.LeafSpec) *fixture {
	t.Helper()
	if spec.URIs == nil {
		spec.URIs = []string{"spiffe://fleet.test/signer/images"}
	}
	if spec.EKU == nil {
		spec.EKU = []x509.ExtKeyUsage{x509.ExtKeyUsageCodeSigning}
	}
	spec.Ed25519 = true
	leaf, k := ca.Leaf(t, spec)
	roots, err := pki.ParseTrustBundle(ca.RootPEM)
	if err != nil {
		t.Fatal(err)
	}
	key := k.(ed25519.PrivateKey)
	chain := []*x509.Certificate{leaf, ca.Inter}
	f := &fixture{ca: ca, roots: roots, key: key, chain: chain}
	if s, err := signedimage.NewSigner(key, chain); err == nil {
		f.signer = s
	}
	return f
}

func (f *fixture) opts() signedimage.VerifyOptions {
	return signedimage.VerifyOptions{Roots: f.roots, Serial: serial, MinGeneration: 3}
}

func (f *fixture) bundle(t testing.TB, gen uint64, img []byte) []byte {
	t.Helper()
	b, err := f.signer.Sign(signedimage.Statement{Serial: serial, Generation: gen, IssuedAt: time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)}, img)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

var smallImage = bytes.Repeat([]byte("squashfs image bytes\n"), 24) // 504 bytes

func TestRoundTrip(t *testing.T) {
	f := newFixture(t, pkitest.LeafSpec{})
	b := f.bundle(t, 3, smallImage)
	v, img, err := signedimage.VerifyBytes(b, f.opts())
	if err != nil {
		t.Fatalf("verify: %v", err)
	}
	if !bytes.Equal(img, smallImage) || v.Serial != serial || v.Generation != 3 || v.Length != int64(len(smallImage)) ||
		v.Signer.String() != "spiffe://fleet.test/signer/images" || v.Format != signedimage.FormatVersion {
		t.Fatalf("verified %+v", v)
	}
	if !bytes.Equal(b, f.bundle(t, 3, smallImage)) {
		t.Fatal("signing the same statement and image twice gave different bundles")
	}
	// Higher generations pass too.
	if _, _, err := signedimage.VerifyBytes(f.bundle(t, 9, smallImage), f.opts()); err != nil {
		t.Fatal(err)
	}
}

// TestEveryBitFlip flips every bit of a small bundle, one at a time: each
// flip is refused, with one of the verifier's own errors.
func TestEveryBitFlip(t *testing.T) {
	f := newFixture(t, pkitest.LeafSpec{})
	b := f.bundle(t, 3, smallImage)
	sentinels := []error{signedimage.ErrMalformed, signedimage.ErrUnsupportedFormat, signedimage.ErrUntrustedSigner,
		signedimage.ErrBadSignature, signedimage.ErrWrongDevice, signedimage.ErrRollback, signedimage.ErrTooLarge,
		signedimage.ErrTruncated, signedimage.ErrDigestMismatch}
	counts := map[error]int{}
	flipped := make([]byte, len(b))
	for i := range len(b) * 8 {
		copy(flipped, b)
		flipped[i/8] ^= 1 << (i % 8)
		_, err := signedimage.Verify(bytes.NewReader(flipped), io.Discard, f.opts())
		if err == nil {
			t.Fatalf("bit %d (byte %d) flipped: accepted", i, i/8)
		}
		known := false
		for _, s := range sentinels {
			if errors.Is(err, s) {
				counts[s]++
				known = true
				break
			}
		}
		if !known {
			t.Fatalf("bit %d flipped: error without a sentinel: %v", i, err)
		}
	}
	t.Logf("%d bytes, %d flips: %v", len(b), len(b)*8, counts)
}

func TestRefusals(t *testing.T) {
	f := newFixture(t, pkitest.LeafSpec{})
	good := f.bundle(t, 3, smallImage)
	other := newFixture(t, pkitest.LeafSpec{}) // another PKI, same trust domain
	now := time.Now()
	expired := fixtureFrom(t, f.ca, pkitest.LeafSpec{NotBefore: now.Add(-48 * time.Hour), NotAfter: now.Add(-24 * time.Hour)})
	noCodeSigning := fixtureFrom(t, f.ca, pkitest.LeafSpec{EKU: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
	coreCert := fixtureFrom(t, f.ca, pkitest.LeafSpec{URIs: []string{"spiffe://fleet.test/core/core"}})

	for _, tc := range []struct {
		name   string
		bundle []byte
		opts   func(*signedimage.VerifyOptions)
		err    error
	}{
		{"another device's bundle", good, func(o *signedimage.VerifyOptions) { o.Serial = "0000000001" }, signedimage.ErrWrongDevice},
		{"older generation", good, func(o *signedimage.VerifyOptions) { o.MinGeneration = 4 }, signedimage.ErrRollback},
		{"signer of another PKI", other.bundle(t, 3, smallImage), nil, signedimage.ErrUntrustedSigner},
		{"expired signer", forge(t, expired, nil, nil, smallImage), nil, signedimage.ErrUntrustedSigner},
		{"signer without codeSigning", forge(t, noCodeSigning, nil, nil, smallImage), nil, signedimage.ErrUntrustedSigner},
		{"core certificate as signer", forge(t, coreCert, nil, nil, smallImage), nil, signedimage.ErrUntrustedSigner},
		{"truncated image", good[:len(good)-1], nil, signedimage.ErrTruncated},
		{"truncated statement", good[:100], nil, signedimage.ErrTruncated},
		{"empty", nil, nil, signedimage.ErrTruncated},
		{"oversized body", append(append([]byte{}, good...), 0), nil, signedimage.ErrTooLarge},
		{"image over the cap", good, func(o *signedimage.VerifyOptions) { o.MaxImageSize = 100 }, signedimage.ErrTooLarge},
		{"image swapped", append(append([]byte{}, good[:len(good)-len(smallImage)]...), bytes.Repeat([]byte("x"), len(smallImage))...), nil, signedimage.ErrDigestMismatch},
		{"not a bundle", []byte("hello, world, this is not a bundle"), nil, signedimage.ErrMalformed},
		{"alg none", forge(t, f, map[string]any{"alg": "none"}, nil, smallImage), nil, signedimage.ErrMalformed},
		{"alg ES256", forge(t, f, map[string]any{"alg": "ES256"}, nil, smallImage), nil, signedimage.ErrMalformed},
		{"other typ", forge(t, f, map[string]any{"typ": "JWT"}, nil, smallImage), nil, signedimage.ErrMalformed},
		{"extra header", forge(t, f, map[string]any{"kid": "x"}, nil, smallImage), nil, signedimage.ErrMalformed},
		{"critical header", forge(t, f, map[string]any{"crit": []string{"exp"}}, nil, smallImage), nil, signedimage.ErrMalformed},
		{"no x5c", forge(t, f, map[string]any{"x5c": []string{}}, nil, smallImage), nil, signedimage.ErrMalformed},
		{"future format", forge(t, f, nil, map[string]any{"format": 2}, smallImage), nil, signedimage.ErrUnsupportedFormat},
		{"unknown statement field", forge(t, f, nil, map[string]any{"evil": true}, smallImage), nil, signedimage.ErrMalformed},
		{"negative length", forge(t, f, nil, map[string]any{"length": -1}, smallImage), nil, signedimage.ErrMalformed},
		{"upper-case digest", forge(t, f, nil, map[string]any{"sha256": strings.ToUpper(digestOf(t, good))}, smallImage), nil, signedimage.ErrMalformed},
		{"non-canonical base64", nonCanonical(t, good), nil, signedimage.ErrMalformed},
		{"statement size zero", withStatementSize(good, 0), nil, signedimage.ErrMalformed},
		{"statement size huge", withStatementSize(good, 1<<30), nil, signedimage.ErrMalformed},
		{"clock in 1970 without floor", good, func(o *signedimage.VerifyOptions) { o.Now = time.Unix(0, 0) }, signedimage.ErrUntrustedSigner},
		{"expired signer, clock in 1970, floor now", forge(t, expired, nil, nil, smallImage), func(o *signedimage.VerifyOptions) { o.Now = time.Unix(0, 0); o.Floor = pki.NewFloor(now, nil) }, signedimage.ErrUntrustedSigner},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := f.opts()
			if tc.opts != nil {
				tc.opts(&o)
			}
			_, err := signedimage.Verify(bytes.NewReader(tc.bundle), io.Discard, o)
			if !errors.Is(err, tc.err) {
				t.Fatalf("Verify: %v; want %v", err, tc.err)
			}
		})
	}
	t.Run("control: forge with honest fields verifies", func(t *testing.T) {
		if _, err := signedimage.Verify(bytes.NewReader(forge(t, f, nil, nil, smallImage)), io.Discard, f.opts()); err != nil {
			t.Fatalf("an honest hand-made bundle is refused, so the cases above prove nothing: %v", err)
		}
	})
	t.Run("clock in 1970 with floor now", func(t *testing.T) {
		o := f.opts()
		o.Now, o.Floor = time.Unix(0, 0), pki.NewFloor(now, nil)
		if _, err := signedimage.Verify(bytes.NewReader(good), io.Discard, o); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("same generation is accepted", func(t *testing.T) {
		o := f.opts()
		o.MinGeneration = 3
		if _, err := signedimage.Verify(bytes.NewReader(good), io.Discard, o); err != nil {
			t.Fatal(err)
		}
	})
}

// countingReader counts what Verify reads.
type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// endless is an endless body.
type endless struct{}

func (endless) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = 'x'
	}
	return len(p), nil
}

func TestNeverReadsPastSignedLengthPlusOne(t *testing.T) {
	f := newFixture(t, pkitest.LeafSpec{})
	good := f.bundle(t, 3, smallImage)
	cr := &countingReader{r: io.MultiReader(bytes.NewReader(good), endless{})}
	_, err := signedimage.Verify(cr, io.Discard, f.opts())
	if !errors.Is(err, signedimage.ErrTooLarge) {
		t.Fatalf("endless body: %v", err)
	}
	if cr.n != int64(len(good))+1 {
		t.Fatalf("read %d bytes of an endless body; want exactly the %d signed plus one", cr.n, len(good))
	}
	// A statement over the cap: no image byte is read at all.
	cr = &countingReader{r: io.MultiReader(bytes.NewReader(good), endless{})}
	o := f.opts()
	o.MaxImageSize = 10
	if _, err := signedimage.Verify(cr, io.Discard, o); !errors.Is(err, signedimage.ErrTooLarge) {
		t.Fatalf("over the cap: %v", err)
	}
	if want := int64(len(good) - len(smallImage)); cr.n != want {
		t.Fatalf("read %d bytes; want the %d of header and statement only", cr.n, want)
	}
}

func TestNewSignerRefusals(t *testing.T) {
	f := newFixture(t, pkitest.LeafSpec{})
	otherKey := newFixture(t, pkitest.LeafSpec{}).key
	core := fixtureFrom(t, f.ca, pkitest.LeafSpec{URIs: []string{"spiffe://fleet.test/core/core"}})
	noCS := fixtureFrom(t, f.ca, pkitest.LeafSpec{EKU: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
	for name, tc := range map[string]struct {
		key   ed25519.PrivateKey
		chain []*x509.Certificate
	}{
		"key of another certificate": {otherKey, f.chain},
		"not a signer identity":      {core.key, core.chain},
		"no codeSigning usage":       {noCS.key, noCS.chain},
		"no certificate":             {f.key, nil},
	} {
		if _, err := signedimage.NewSigner(tc.key, tc.chain); err == nil {
			t.Errorf("%s: signer made", name)
		}
	}
	if _, err := f.signer.Sign(signedimage.Statement{Serial: "NOT-A-SERIAL"}, smallImage); err == nil {
		t.Error("signed a statement for a malformed serial")
	}
}

// forge builds a bundle by hand from f's key and chain, with header and
// statement fields overridden (nil deletes nothing; a field set to a value
// replaces it), signed correctly, so only the override can make it fail.
func forge(t testing.TB, f *fixture, header, statement map[string]any, img []byte) []byte {
	t.Helper()
	x5c := make([]string, len(f.chain))
	for i, c := range f.chain {
		x5c[i] = base64.StdEncoding.EncodeToString(c.Raw)
	}
	h := map[string]any{"alg": "EdDSA", "typ": signedimage.MediaType, "x5c": x5c}
	for k, v := range header {
		h[k] = v
	}
	st := map[string]any{"format": 1, "serial": serial, "generation": 3, "sha256": sha(img), "length": len(img), "issuedAt": time.Now().UTC().Format(time.RFC3339)}
	for k, v := range statement {
		st[k] = v
	}
	hb, err := json.Marshal(h)
	if err != nil {
		t.Fatal(err)
	}
	pb, err := json.Marshal(st)
	if err != nil {
		t.Fatal(err)
	}
	input := base64.RawURLEncoding.EncodeToString(hb) + "." + base64.RawURLEncoding.EncodeToString(pb)
	jws := input + "." + base64.RawURLEncoding.EncodeToString(ed25519.Sign(f.key, []byte(input)))
	return assemble(jws, img)
}

func assemble(jws string, img []byte) []byte {
	out := append([]byte(signedimage.Magic), binary.BigEndian.AppendUint32(nil, uint32(len(jws)))...)
	out = append(out, jws...)
	return append(out, img...)
}

// nonCanonical re-spells the signature with a non-zero unused bit in its
// last base64 character: the same bytes, another spelling.
func nonCanonical(t testing.TB, b []byte) []byte {
	t.Helper()
	n := binary.BigEndian.Uint32(b[len(signedimage.Magic):])
	start := len(signedimage.Magic) + 4
	jws := []byte(string(b[start : start+int(n)]))
	// An Ed25519 signature is 64 bytes: 86 base64 characters, the last
	// holding 2 bits of data and 4 unused ones.
	last := len(jws) - 1
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
	idx := strings.IndexByte(alphabet, jws[last])
	jws[last] = alphabet[idx|1]
	if jws[last] == b[start+last] {
		jws[last] = alphabet[idx|2]
	}
	if _, err := base64.RawURLEncoding.DecodeString(string(jws[strings.LastIndexByte(string(jws), '.')+1:])); err != nil {
		t.Fatalf("the lenient decoder refuses the re-spelling too: %v", err)
	}
	return assemble(string(jws), b[start+int(n):])
}

func withStatementSize(b []byte, n uint32) []byte {
	out := append([]byte{}, b...)
	binary.BigEndian.PutUint32(out[len(signedimage.Magic):], n)
	return out
}

func digestOf(t testing.TB, b []byte) string {
	t.Helper()
	n := binary.BigEndian.Uint32(b[len(signedimage.Magic):])
	return sha(b[len(signedimage.Magic)+4+int(n):])
}

func sha(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// TestJOSEVerifies: a general JWS library (go-jose, through
// go.step.sm/crypto/jose) reads and verifies our statements, so a compatible
// verifier needs nothing of ours.
func TestJOSEVerifies(t *testing.T) {
	f := newFixture(t, pkitest.LeafSpec{})
	b := f.bundle(t, 3, smallImage)
	n := binary.BigEndian.Uint32(b[len(signedimage.Magic):])
	compact := string(b[len(signedimage.Magic)+4 : len(signedimage.Magic)+4+int(n)])
	jws, err := jose.ParseJWS(compact)
	if err != nil {
		t.Fatal(err)
	}
	h := jws.Signatures[0].Protected
	if h.Algorithm != "EdDSA" || h.ExtraHeaders["typ"] != signedimage.MediaType {
		t.Fatalf("header %+v", h)
	}
	chains, err := h.Certificates(x509.VerifyOptions{Roots: f.roots.Pool(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageCodeSigning}})
	if err != nil {
		t.Fatalf("x5c chain: %v", err)
	}
	payload, err := jws.Verify(chains[0][0].PublicKey)
	if err != nil {
		t.Fatalf("go-jose does not verify our signature: %v", err)
	}
	var st signedimage.Statement
	if err := json.Unmarshal(payload, &st); err != nil || st.Serial != serial || st.Length != int64(len(smallImage)) || st.SHA256 != sha(smallImage) {
		t.Fatalf("statement %+v %v", st, err)
	}
}

// AtIssue (a stored bundle, verified again at boot) checks the signer at
// the statement's issue time: a signer that has expired since still
// vouches for what it signed while valid, and nothing else.
func TestAtIssue(t *testing.T) {
	f := newFixture(t, pkitest.LeafSpec{})
	now := time.Now().UTC().Truncate(time.Second)
	// (The test CA's intermediate is an hour old.)
	expired := fixtureFrom(t, f.ca, pkitest.LeafSpec{NotBefore: now.Add(-50 * time.Minute), NotAfter: now.Add(-10 * time.Minute)})
	other := newFixture(t, pkitest.LeafSpec{})
	issued := func(at time.Time) map[string]any { return map[string]any{"issuedAt": at.Format(time.RFC3339)} }
	for _, tc := range []struct {
		name   string
		bundle []byte
		err    error
	}{
		{"signed while valid, expired since", forge(t, expired, nil, issued(now.Add(-30*time.Minute)), smallImage), nil},
		{"signed after the signer expired", forge(t, expired, nil, issued(now.Add(-5*time.Minute)), smallImage), signedimage.ErrBadIssueTime},
		{"signed before the signer existed", forge(t, expired, nil, issued(now.Add(-55*time.Minute)), smallImage), signedimage.ErrBadIssueTime},
		{"another PKI's signer", forge(t, other, nil, issued(now), smallImage), signedimage.ErrUntrustedSigner},
		{"bad signature", flipSignature(forge(t, expired, nil, issued(now.Add(-30*time.Minute)), smallImage)), signedimage.ErrBadSignature},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := f.opts()
			o.AtIssue = true
			_, err := signedimage.Verify(bytes.NewReader(tc.bundle), io.Discard, o)
			if !errors.Is(err, tc.err) || (tc.err == nil && err != nil) {
				t.Fatalf("got %v, want %v", err, tc.err)
			}
			if tc.err == nil {
				// Checked now, the same bundle is refused: AtIssue is
				// only for what was accepted before.
				if _, err := signedimage.Verify(bytes.NewReader(tc.bundle), io.Discard, f.opts()); !errors.Is(err, signedimage.ErrUntrustedSigner) {
					t.Fatalf("without AtIssue: %v", err)
				}
			}
		})
	}
}

// A generation made before the signer's certificate began (signed after a
// renewal or a rotation of the signer) is dated when the chain began: the
// bundle then verifies at its issue time too, as a device checks it at
// every boot after installing it. A later date stays as it is.
func TestStatementDatedFromTheChain(t *testing.T) {
	now := time.Now().UTC().Truncate(time.Second)
	// (The test CA's intermediate is an hour old.)
	f := newFixture(t, pkitest.LeafSpec{NotBefore: now.Add(-10 * time.Minute), NotAfter: now.Add(time.Hour)})
	for _, tc := range []struct {
		name           string
		issued, wantAt time.Time
	}{
		{"a generation older than the signer", now.Add(-2 * time.Hour), now.Add(-10 * time.Minute)},
		{"a generation younger than the signer", now.Add(-5 * time.Minute), now.Add(-5 * time.Minute)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, err := f.signer.Sign(signedimage.Statement{Serial: serial, Generation: 4, IssuedAt: tc.issued}, smallImage)
			if err != nil {
				t.Fatal(err)
			}
			fetched, err := signedimage.Verify(bytes.NewReader(b), io.Discard, f.opts())
			if err != nil {
				t.Fatalf("fetched: %v", err)
			}
			o := f.opts()
			o.AtIssue = true
			kept, err := signedimage.Verify(bytes.NewReader(b), io.Discard, o)
			if err != nil {
				t.Fatalf("kept, checked at its issue time: %v", err)
			}
			if !fetched.IssuedAt.Equal(tc.wantAt) || !kept.IssuedAt.Equal(tc.wantAt) {
				t.Fatalf("dated %s, want %s", kept.IssuedAt, tc.wantAt)
			}
		})
	}
}

// flipSignature changes the last character of the compact JWS's signature.
func flipSignature(b []byte) []byte {
	b = append([]byte{}, b...)
	n := int(binary.BigEndian.Uint32(b[len(signedimage.Magic):]))
	end := len(signedimage.Magic) + 4 + n
	c := b[end-2]
	if c == 'A' {
		c = 'B'
	} else {
		c = 'A'
	}
	b[end-2] = c
	return b
}
