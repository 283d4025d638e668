package imagebuild_test

import (
	"bytes"
	"crypto/ed25519"
	"crypto/x509"
	"encoding/binary"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/fleetprov/prov/core/contract/imagespec"
	"github.com/fleetprov/prov/core/imagebuild"
	"github.com/fleetprov/prov/pki/pkitest"
	"github.com/fleetprov/prov/pki/signedimage"
)

// BenchmarkImage measures, in one run, what issue 3 compares: our
// build+sign of a typical record, the same record through mksquashfs (a
// process per image, as a pipeline around it would run) + sign, and a bare
// Ed25519 signature over a statement-sized message.
func BenchmarkImage(b *testing.B) {
	ca := pkitest.NewCA(b, "fleet.test")
	leaf, k := ca.Leaf(b, pkitest.LeafSpec{URIs: []string{"spiffe://fleet.test/signer/images"}, EKU: []x509.ExtKeyUsage{x509.ExtKeyUsageCodeSigning}, Ed25519: true})
	key := k.(ed25519.PrivateKey)
	s, err := signedimage.NewSigner(key, []*x509.Certificate{leaf, ca.Inter})
	if err != nil {
		b.Fatal(err)
	}
	rec := record()
	rules := imagespec.DefaultRules()

	b.Run("bare-ed25519-sign/statement", func(b *testing.B) {
		msg, _ := json.Marshal(signedimage.Statement{Format: 1, Serial: rec.Serial, Generation: 1, SHA256: "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef", Length: 4096, IssuedAt: rec.IssuedAt})
		for b.Loop() {
			_ = ed25519.Sign(key, msg)
		}
	})
	// The JWS signing input also holds the protected header with the x5c
	// chain (~1.9 KiB in all); Ed25519 hashes its message twice, so this is
	// the bare cost of signing what a bundle signs.
	b.Run("bare-ed25519-sign/jws-input", func(b *testing.B) {
		bundle, _, err := imagebuild.BuildBundle(rec, rules, s)
		if err != nil {
			b.Fatal(err)
		}
		n := int(binary.BigEndian.Uint32(bundle[len(signedimage.Magic):]))
		jws := bundle[len(signedimage.Magic)+4 : len(signedimage.Magic)+4+n]
		input := jws[:bytes.LastIndexByte(jws, '.')]
		for b.Loop() {
			_ = ed25519.Sign(key, input)
		}
	})
	b.Run("build", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := imagebuild.Build(rec, rules); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("build+sign", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, _, err := imagebuild.BuildBundle(rec, rules, s); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("mksquashfs+sign", func(b *testing.B) {
		bin, err := exec.LookPath("mksquashfs")
		if err != nil {
			b.Skip("mksquashfs not installed (Debian's squashfs-tools)")
		}
		files, err := rec.Files(rules)
		if err != nil {
			b.Fatal(err)
		}
		dir := b.TempDir()
		out := filepath.Join(dir, "img")
		for b.Loop() {
			// What a pipeline around mksquashfs does per image: write the
			// tree, run the tool, read the image, sign it.
			src := filepath.Join(dir, "src")
			_ = os.RemoveAll(src)
			for p, c := range files {
				full := filepath.Join(src, p)
				if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
					b.Fatal(err)
				}
				if err := os.WriteFile(full, c, 0o644); err != nil {
					b.Fatal(err)
				}
			}
			cmd := exec.Command(bin, src, out, "-noappend", "-all-root", "-all-time", "0", "-mkfs-time", "0", "-no-fragments", "-no-exports", "-no-xattrs", "-quiet", "-no-progress")
			if o, err := cmd.CombinedOutput(); err != nil {
				b.Fatalf("%v: %s", err, o)
			}
			img, err := os.ReadFile(out)
			if err != nil {
				b.Fatal(err)
			}
			if _, err := s.Sign(signedimage.Statement{Serial: rec.Serial, Generation: rec.Generation, IssuedAt: rec.IssuedAt}, img); err != nil {
				b.Fatal(err)
			}
		}
	})
}
