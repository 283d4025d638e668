// Package conformance generates the bundle verifier's conformance suite,
// testdata/conformance: a pinned root, bundles and cases.json, each case
// naming the verifier's inputs (serial, high-water mark, clock, clock
// floor, fetched or kept) and the verdict docs/image-format.md gives, with
// the error name and the step that decides it. Any verifier, in any
// language, can run it; the Go verifier runs it in deviceclient/install
// and testdata/conformance/verify.py, written from the document alone, in
// this package's tests. Modelled on Wycheproof and tuf-conformance.
//
// Everything is derived from fixed seeds and fixed times, so generating
// again gives the same bytes (a test holds the committed suite to that).
// Regenerate with `go generate ./core/imagebuild/conformance` or
// `prov-core image conformance --out testdata/conformance`.
package conformance

//go:generate go run ../../cmd/prov-core image conformance --out ../../../testdata/conformance

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/fleetprov/prov/core/contract/imagespec"
	"github.com/fleetprov/prov/core/imagebuild"
	"github.com/fleetprov/prov/core/imagebuild/squashfs"
	"github.com/fleetprov/prov/internal/atomicfile"
	"github.com/fleetprov/prov/pki/signedimage"
)

// Manifest is cases.json.
type Manifest struct {
	// Specification is the document the verdicts come from.
	Specification string `json:"specification"`
	// Root is the pinned root certificate (PEM), relative to cases.json.
	Root string `json:"root"`
	// MaxImageSize is the verifier's image cap in bytes, as on devices.
	MaxImageSize int64  `json:"maxImageSize"`
	Cases        []Case `json:"cases"`
}

// Case is one verification and its verdict.
type Case struct {
	Name string `json:"name"`
	// Bundle is the bundle file, relative to cases.json.
	Bundle string `json:"bundle"`
	// Serial is the verifier's own serial; HighWater its generation
	// high-water mark.
	Serial    string `json:"serial"`
	HighWater uint64 `json:"highWater"`
	// Clock is the verifier's clock; Floor its clock floor (null: none, as
	// on a server with a real clock). Both RFC 3339.
	Clock string  `json:"clock"`
	Floor *string `json:"floor"`
	// Kept: the bundle was accepted before and is checked again (at boot),
	// at its issue time (steps 13 and 18 of the specification).
	Kept bool `json:"kept"`
	// Verdict is "accepted" or "refused"; Error and Step name the refusal
	// as the specification does.
	Verdict string `json:"verdict"`
	Error   string `json:"error,omitempty"`
	Step    int    `json:"step,omitempty"`
	// Check is, for a refusal by the pre-mount inspection (step 25), the
	// name of the inspection's check that refuses (section 6 of the
	// specification: the first of its checks that fails).
	Check string `json:"check,omitempty"`
	// About says what the case shows; "issue 14" marks a finding of that
	// issue (a verdict the verifier of the time got wrong).
	About string `json:"about"`
}

// Verdicts.
const (
	Accepted = "accepted"
	Refused  = "refused"
)

const (
	serial      = "1a2b3c4d5e"
	otherSerial = "0f0e0d0c0b"
	generation  = 3
	rootFile    = "root.pem"
	casesFile   = "cases.json"
	bundlesDir  = "bundles"
)

// Files generates the suite: file name (slash-separated, relative to the
// suite's directory) to content.
func Files() (map[string][]byte, error) {
	g, err := newGen()
	if err != nil {
		return nil, err
	}
	files := map[string][]byte{rootFile: pemOf(g.pki.root)}
	m := Manifest{Specification: "docs/image-format.md", Root: rootFile, MaxImageSize: imagespec.MaxImageSize}
	names := map[string]bool{}
	for _, c := range cases(g) {
		if g.err != nil {
			return nil, g.err
		}
		if names[c.name] {
			return nil, fmt.Errorf("two cases named %q", c.name)
		}
		names[c.name] = true
		sum := sha256.Sum256(c.bundle)
		file := bundlesDir + "/" + hex.EncodeToString(sum[:8]) + ".bundle"
		files[file] = c.bundle
		out := Case{Name: c.name, Bundle: file, Serial: serial, HighWater: generation, Clock: clock.Format(time.RFC3339),
			Verdict: Accepted, About: c.about}
		floor := clock.AddDate(0, 0, -20).Format(time.RFC3339) // devices always have one
		out.Floor = &floor
		if c.step != 0 {
			out.Verdict, out.Error, out.Step = Refused, string(c.step.Reason()), int(c.step)
		}
		if (c.step == signedimage.StepInspection) != (c.check != "") {
			return nil, fmt.Errorf("case %q: an inspection refusal, and only one, names its check", c.name)
		}
		out.Check = c.check
		if c.opts != nil {
			c.opts(&out)
		}
		m.Cases = append(m.Cases, out)
	}
	if g.err != nil {
		return nil, g.err
	}
	j, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return nil, err
	}
	files[casesFile] = append(j, '\n')
	return files, nil
}

// Write generates the suite into dir, replacing the files it makes and
// removing bundles no case names any more.
func Write(dir string) error {
	files, err := Files()
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Join(dir, bundlesDir), 0o755); err != nil { //nolint:gosec // public test data
		return err
	}
	old, err := filepath.Glob(filepath.Join(dir, bundlesDir, "*.bundle"))
	if err != nil {
		return err
	}
	for _, f := range old {
		if _, ok := files[bundlesDir+"/"+filepath.Base(f)]; !ok {
			if err := os.Remove(f); err != nil {
				return err
			}
		}
	}
	names := make([]string, 0, len(files))
	for name := range files {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		if err := atomicfile.WriteFile(filepath.Join(dir, filepath.FromSlash(name)), files[name], 0o644); err != nil {
			return err
		}
	}
	return nil
}

func pemOf(certs ...*x509.Certificate) []byte {
	var out []byte
	for _, c := range certs {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	return out
}

// gen makes the bundles of the cases.
type gen struct {
	pki    *pkiSet
	signer *signedimage.Signer
	good   []byte // the honest bundle core makes: generation 3, issued at clock
	image  []byte // its image
	err    error  // the first error; cases read it at the end
}

func newGen() (*gen, error) {
	p, err := newPKI()
	if err != nil {
		return nil, err
	}
	s, err := signedimage.NewSigner(key("signer"), []*x509.Certificate{p.signer, p.inter})
	if err != nil {
		return nil, err
	}
	g := &gen{pki: p, signer: s}
	g.good, g.image, err = imagebuild.BuildBundle(record(generation, issued), imagespec.DefaultRules(), s)
	if err != nil {
		return nil, err
	}
	return g, nil
}

// record is the suite's device record at a generation.
func record(gen uint64, at time.Time) *imagebuild.Record { return recordOf(serial, gen, at) }

// recordOf is a device's record at a generation.
func recordOf(serial string, gen uint64, at time.Time) *imagebuild.Record {
	return &imagebuild.Record{
		Serial: serial, Generation: gen, IssuedAt: at, Hostname: "dev-" + serial,
		MachineID: "5f1e0c9a7b3d4e2f8a6c0b1d3e5f7a9c", MQTTClientID: serial, MQTTGroupID: "fleet",
		Data: map[string]string{"/etc/prov/data/site": "lab-1\n"},
	}
}

func (g *gen) fail(err error) {
	if g.err == nil && err != nil {
		g.err = err
	}
}

// imageOf builds the image of a record; with metadata set, its
// /etc/prov/image.json holds exactly those bytes instead of the builder's.
func (g *gen) imageOf(r *imagebuild.Record, metadata string) []byte {
	files, err := r.Files(imagespec.DefaultRules())
	if err != nil {
		g.fail(err)
		return nil
	}
	if metadata != "" {
		files[imagespec.Metadata] = []byte(metadata)
	}
	entries := make([]squashfs.Entry, 0, len(files))
	for p, data := range files {
		entries = append(entries, squashfs.Entry{Path: p, Mode: imagespec.FileMode, Data: data})
	}
	img, err := squashfs.Build(entries, squashfs.Options{})
	g.fail(err)
	return img
}

// signed is the honest signer's bundle of any image, the statement made
// from it (generation 3, issued at the suite's clock): the one-line way to
// add a case about the image itself.
func (g *gen) signed(img []byte) []byte {
	b, err := g.signer.Sign(signedimage.Statement{Serial: serial, Generation: generation, IssuedAt: issued}, img)
	g.fail(err)
	return b
}

// header is the compact protected header naming chain (by certificate
// name) in x5c.
func (g *gen) header(chain ...string) string {
	x5c := make([]string, len(chain))
	for i, name := range chain {
		c, ok := g.pki.certs[name]
		if !ok {
			g.fail(fmt.Errorf("no certificate %q", name))
			return ""
		}
		x5c[i] = `"` + base64.StdEncoding.EncodeToString(c.Raw) + `"`
	}
	return `{"alg":"EdDSA","typ":"prov-image+jws","x5c":[` + strings.Join(x5c, ",") + `]}`
}

// payload is the honest statement of img as JSON text, with each pair of
// replacements applied to it (old, new, old, new...).
func payload(img []byte, replace ...string) string {
	sum := sha256.Sum256(img)
	s := fmt.Sprintf(`{"format":1,"serial":"%s","generation":%d,"sha256":"%s","length":%d,"issuedAt":"%s"}`,
		serial, generation, hex.EncodeToString(sum[:]), len(img), issued.Format(time.RFC3339))
	return strings.NewReplacer(replace...).Replace(s)
}

// forge signs header and payload text as given with the named
// certificate's key and appends img: a bundle only a holder of that key
// could make.
func (g *gen) forge(signer, header, payload string, img []byte) []byte {
	enc := base64.RawURLEncoding
	input := enc.EncodeToString([]byte(header)) + "." + enc.EncodeToString([]byte(payload))
	return assemble(input+"."+enc.EncodeToString(ed25519.Sign(key(signer), []byte(input))), img)
}

// honest is forge with the honest signer and chain.
func (g *gen) honest(payload string) []byte {
	return g.forge("signer", g.header("signer", "intermediate"), payload, g.image)
}

// withSigner is an honest statement of the image signed by another
// certificate, sent with chain.
func (g *gen) withSigner(signer string, chain ...string) []byte {
	return g.forge(signer, g.header(append([]string{signer}, chain...)...), payload(g.image), g.image)
}

func assemble(jws string, img []byte) []byte {
	out := binary.BigEndian.AppendUint32([]byte(signedimage.Magic), uint32(len(jws))) //nolint:gosec // small
	out = append(out, jws...)
	return append(out, img...)
}

// statementOf splits a bundle into the compact JWS and the image.
func statementOf(b []byte) (jws string, img []byte) {
	n := int(binary.BigEndian.Uint32(b[len(signedimage.Magic):]))
	start := len(signedimage.Magic) + 4
	return string(b[start : start+n]), b[start+n:]
}

// respell replaces the JWS of a bundle with f(jws), the rest unchanged.
func respell(b []byte, f func(string) string) []byte {
	jws, img := statementOf(b)
	return assemble(f(jws), img)
}

// renewedSignerBundle is what core makes with a signer renewed after the
// generation was made: statement and image.json dated when its chain began.
func (g *gen) renewedSignerBundle() []byte {
	s, err := signedimage.NewSigner(key("signer-renewed"), []*x509.Certificate{g.pki.certs["signer-renewed"], g.pki.inter})
	if err != nil {
		g.fail(err)
		return nil
	}
	b, _, err := imagebuild.BuildBundle(record(generation, issued), imagespec.DefaultRules(), s)
	g.fail(err)
	return b
}

func withSize(b []byte, n uint32) []byte {
	out := bytes.Clone(b)
	binary.BigEndian.PutUint32(out[len(signedimage.Magic):], n)
	return out
}

func itoa(n int) string { return strconv.Itoa(n) }

func sha(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

func b64(s string) string { return base64.RawURLEncoding.EncodeToString([]byte(s)) }

func flipLast(b []byte) []byte {
	out := bytes.Clone(b)
	out[len(out)-1] ^= 1
	return out
}
