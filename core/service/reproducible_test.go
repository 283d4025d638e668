package service_test

import (
	"bytes"
	"testing"
	"time"

	"github.com/fleetprov/prov/core/contract/imagespec"
	"github.com/fleetprov/prov/core/coretest"
	"github.com/fleetprov/prov/core/service"
	"github.com/fleetprov/prov/core/store"
	"github.com/fleetprov/prov/pki"
	"github.com/fleetprov/prov/pki/ca/catest"
	"github.com/fleetprov/prov/pki/signedimage"
)

// Two core instances with the same configuration and machine-id secret but
// separate stores register the same hardware ID at the same moment (the
// registration time is part of the record) and serve byte-identical
// images, and identical bundles, since they share the signer key (Ed25519
// signatures are deterministic).
func TestInstancesAgreeByteForByte(t *testing.T) {
	c := catest.Shared(t)
	at := time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC)
	clock := service.WithStoreOptions(store.Options{Now: func() time.Time { return at }})
	var bundles, images [2][]byte
	for i := range 2 {
		dir := t.TempDir()
		core := coretest.Run(t, c, coretest.Config(t, c.Deployment, dir, ""), dir, clock)
		d := core.Register(t, "rpi4", coretest.RPi4(0x7e9))
		bundles[i], _ = core.Bundle(t, d.Serial)
		roots, err := pki.LoadTrustBundle(c.RootCert())
		if err != nil {
			t.Fatal(err)
		}
		v, img, err := signedimage.VerifyBytes(bundles[i], signedimage.VerifyOptions{Roots: roots, Serial: d.Serial, MaxImageSize: imagespec.MaxImageSize})
		if err != nil || v.Generation != 1 {
			t.Fatalf("core %d: %+v %v", i, v, err)
		}
		images[i] = img
	}
	if !bytes.Equal(images[0], images[1]) {
		t.Fatalf("images differ: %d and %d bytes", len(images[0]), len(images[1]))
	}
	if !bytes.Equal(bundles[0], bundles[1]) {
		t.Fatal("bundles differ although the signer key is shared")
	}
}
