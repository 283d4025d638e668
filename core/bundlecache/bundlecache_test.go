package bundlecache_test

import (
	"crypto/ed25519"
	"crypto/x509"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/fleetprov/prov/core/bundlecache"
	"github.com/fleetprov/prov/core/contract/imagespec"
	"github.com/fleetprov/prov/core/imagebuild"
	"github.com/fleetprov/prov/pki"
	"github.com/fleetprov/prov/pki/pkitest"
	"github.com/fleetprov/prov/pki/signedimage"
)

func signer(t *testing.T) *signedimage.Signer {
	t.Helper()
	s, _ := signerWithRoots(t)
	return s
}

// signerWithRoots is a signer of a CA of its own, and that CA's root.
func signerWithRoots(t *testing.T) (*signedimage.Signer, *pki.TrustBundle) {
	t.Helper()
	ca := pkitest.NewCA(t, "fleet.test")
	roots, err := pki.ParseTrustBundle(ca.RootPEM)
	if err != nil {
		t.Fatal(err)
	}
	leaf, k := ca.Leaf(t, pkitest.LeafSpec{URIs: []string{"spiffe://fleet.test/signer/images"}, EKU: []x509.ExtKeyUsage{x509.ExtKeyUsageCodeSigning}, Ed25519: true})
	s, err := signedimage.NewSigner(k.(ed25519.PrivateKey), []*x509.Certificate{leaf, ca.Inter})
	if err != nil {
		t.Fatal(err)
	}
	return s, roots
}

// issued is every test record's issue time: one fixed time (the same
// record gives the same image) inside the validity of the test signers made
// after it (a minute before their making to an hour after). A statement
// may not be dated outside its signer's validity (docs/image-format.md,
// step 18), and one dated before its signer began is re-dated, image.json
// with it.
var issued = time.Now().Add(10 * time.Minute).UTC().Truncate(time.Second)

func rec(serial string, gen uint64) *imagebuild.Record {
	return &imagebuild.Record{Serial: serial, Generation: gen, IssuedAt: issued, Hostname: "h", MQTTClientID: "c", MQTTGroupID: "g"}
}

func TestOneBuildPerGeneration(t *testing.T) {
	c := bundlecache.New(signer(t), imagespec.DefaultRules(), 64<<20)
	var wg sync.WaitGroup
	results := make([]*bundlecache.Bundle, 50)
	for i := range results {
		wg.Add(1)
		go func() {
			defer wg.Done()
			b, err := c.Get(rec("1a2b3c4d5e", 1))
			if err != nil {
				t.Error(err)
			}
			results[i] = b
		}()
	}
	wg.Wait()
	// Concurrent callers wait for the one build or hit the cache.
	if s := c.Stats(); s.Builds != 1 {
		t.Fatalf("%d builds for one generation", s.Builds)
	}
	for _, b := range results[1:] {
		if b != results[0] {
			t.Fatal("callers got different bundles")
		}
	}
	b2, err := c.Get(rec("1a2b3c4d5e", 2))
	if err != nil || b2.ETag == results[0].ETag || c.Stats().Builds != 2 {
		t.Fatalf("a new generation: %v %v", b2, err)
	}
}

func TestEvictsToItsBound(t *testing.T) {
	c := bundlecache.New(signer(t), imagespec.DefaultRules(), 1<<20)
	first, err := c.Get(rec("1a2b3c4d5e", 1))
	if err != nil {
		t.Fatal(err)
	}
	for i := range 400 {
		if _, err := c.Get(rec(fmt.Sprintf("%010x", i), 1)); err != nil {
			t.Fatal(err)
		}
	}
	s := c.Stats()
	if s.Bytes > 1<<20 || s.Evictions == 0 {
		t.Fatalf("stats %+v", s)
	}
	again, err := c.Get(rec("1a2b3c4d5e", 1))
	if err != nil || string(again.Bytes) != string(first.Bytes) {
		t.Fatal("a rebuilt bundle differs from the evicted one")
	}
}

// A new signer (a renewed certificate) signs what is built after it; what
// the old one signed is dropped, not served until its chain ends.
func TestSetSignerDropsOldBundles(t *testing.T) {
	old, oldRoots := signerWithRoots(t)
	renewed, renewedRoots := signerWithRoots(t)
	c := bundlecache.New(old, imagespec.DefaultRules(), 64<<20)
	before, err := c.Get(rec("1a2b3c4d5e", 1))
	if err != nil {
		t.Fatal(err)
	}
	c.SetSigner(renewed)
	if s := c.Stats(); s.Entries != 0 || s.Bytes != 0 || s.Evictions != 1 {
		t.Fatalf("after SetSigner: %+v", s)
	}
	after, err := c.Get(rec("1a2b3c4d5e", 1))
	if err != nil {
		t.Fatal(err)
	}
	// The same image (ETag), signed with the new chain.
	signedBy := func(b *bundlecache.Bundle, roots *pki.TrustBundle) bool {
		_, _, err := signedimage.VerifyBytes(b.Bytes, signedimage.VerifyOptions{Roots: roots, Serial: "1a2b3c4d5e", MaxImageSize: imagespec.MaxImageSize})
		return err == nil
	}
	if after.ETag != before.ETag || !signedBy(after, renewedRoots) || signedBy(after, oldRoots) || !signedBy(before, oldRoots) || c.Stats().Builds != 2 {
		t.Fatalf("the same generation after SetSigner: etag %s (was %s), %d builds", after.ETag, before.ETag, c.Stats().Builds)
	}
}
