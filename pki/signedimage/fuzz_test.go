package signedimage_test

import (
	"bytes"
	"crypto/ed25519"
	"crypto/x509"
	"encoding/pem"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/fleetprov/prov/pki"
	"github.com/fleetprov/prov/pki/pkitest"
	"github.com/fleetprov/prov/pki/signedimage"
)

// The fuzz PKI is fixed (testdata/fuzz-pki, valid to 2100) so that the
// seed corpus holds bundles that verify, and the fuzzer starts deep inside
// the verifier instead of at its first check.
var updateFuzz = flag.Bool("update-fuzz-corpus", false, "regenerate testdata/fuzz-pki and the seed corpus")

var fuzzNow = time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)

func fuzzPKI(t testing.TB) (*pki.TrustBundle, *signedimage.Signer) {
	t.Helper()
	dir := filepath.Join("testdata", "fuzz-pki")
	root, err := pki.LoadTrustBundle(filepath.Join(dir, "root.pem"))
	if err != nil {
		t.Fatalf("%v (regenerate with: go test ./pki/signedimage -run TestUpdateFuzzCorpus -update-fuzz-corpus)", err)
	}
	chainPEM, err := os.ReadFile(filepath.Join(dir, "signer.pem"))
	if err != nil {
		t.Fatal(err)
	}
	chain, err := pki.ParseCertificates(chainPEM)
	if err != nil {
		t.Fatal(err)
	}
	keyPEM, err := os.ReadFile(filepath.Join(dir, "signer.key"))
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(keyPEM)
	if block == nil {
		t.Fatal("signer.key is not PEM")
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	s, err := signedimage.NewSigner(k.(ed25519.PrivateKey), chain)
	if err != nil {
		t.Fatal(err)
	}
	return root, s
}

func fuzzOpts(root *pki.TrustBundle) signedimage.VerifyOptions {
	return signedimage.VerifyOptions{Roots: root, Serial: serial, MinGeneration: 2, Now: fuzzNow, MaxImageSize: 1 << 20}
}

// FuzzVerify: whatever the bytes, Verify does not panic, reads at most what
// it may, and accepts only bundles that the signer would produce byte for
// byte (so there is exactly one accepted spelling of each bundle).
func FuzzVerify(f *testing.F) {
	root, s := fuzzPKI(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		v, img, err := signedimage.VerifyBytes(data, fuzzOpts(root))
		if err != nil {
			return
		}
		again, err := s.Sign(v.Statement, img)
		if err != nil {
			t.Fatalf("re-sign an accepted statement: %v", err)
		}
		if !bytes.Equal(again, data) {
			t.Fatalf("accepted a bundle (%d bytes) that differs from what the signer makes for its statement", len(data))
		}
	})
}

// TestUpdateFuzzCorpus regenerates the fixed fuzz PKI and the seed corpus.
func TestUpdateFuzzCorpus(t *testing.T) {
	if !*updateFuzz {
		t.Skip("run with -update-fuzz-corpus to regenerate testdata")
	}
	ca := pkitest.NewCA(t, "fleet.test")
	far := time.Date(2100, 1, 1, 0, 0, 0, 0, time.UTC)
	leaf, key := ca.Leaf(t, pkitest.LeafSpec{URIs: []string{"spiffe://fleet.test/signer/images"}, EKU: []x509.ExtKeyUsage{x509.ExtKeyUsageCodeSigning},
		Ed25519: true, NotBefore: time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC), NotAfter: far})
	dir := filepath.Join("testdata", "fuzz-pki")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	for name, data := range map[string][]byte{
		"root.pem":   ca.RootPEM,
		"signer.pem": pkitest.PEM(leaf, ca.Inter),
		"signer.key": pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}),
	} {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	root, s := fuzzPKI(t)
	st := signedimage.Statement{Serial: serial, Generation: 2, IssuedAt: time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)}
	valid, err := s.Sign(st, smallImage)
	if err != nil {
		t.Fatal(err)
	}
	empty, err := s.Sign(st, nil)
	if err != nil {
		t.Fatal(err)
	}
	other := st
	other.Serial = "0000000001"
	wrongDevice, err := s.Sign(other, smallImage)
	if err != nil {
		t.Fatal(err)
	}
	seeds := [][]byte{valid, empty, wrongDevice, valid[:len(valid)-10], append(append([]byte{}, valid...), 'x'), []byte(signedimage.Magic)}
	corpus := filepath.Join("testdata", "fuzz", "FuzzVerify")
	if err := os.MkdirAll(corpus, 0o755); err != nil {
		t.Fatal(err)
	}
	for i, seed := range seeds {
		content := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", seed)
		if err := os.WriteFile(filepath.Join(corpus, fmt.Sprintf("seed%d", i)), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if _, _, err := signedimage.VerifyBytes(valid, fuzzOpts(root)); err != nil {
		t.Fatalf("the valid seed does not verify: %v", err)
	}
}
