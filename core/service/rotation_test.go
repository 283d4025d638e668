package service_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/fleetprov/prov/core/contract/imagespec"
	"github.com/fleetprov/prov/core/coretest"
	"github.com/fleetprov/prov/pki"
	"github.com/fleetprov/prov/pki/ca/catest"
	pkicli "github.com/fleetprov/prov/pki/cli"
	"github.com/fleetprov/prov/pki/signedimage"
)

// docs/operations.md's signer rotation: a new signer identity from
// prov-pki issue, core restarted on it; devices accept its bundles at once
// (the same root, the signer role), and a bundle signed by the old signer
// still verifies.
func TestSignerRotation(t *testing.T) {
	c := catest.Start(t)
	dir := t.TempDir()
	core := coretest.Run(t, c, coretest.Config(t, c.Deployment, dir, ""), dir)
	d := core.Register(t, "rpi4", coretest.RPi4(0x5a))
	fetch := func(core *coretest.Core) []byte {
		t.Helper()
		b, _ := core.Bundle(t, d.Serial)
		return b
	}
	before := fetch(core)
	core.Stop()

	pw := filepath.Join(t.TempDir(), "password")
	if err := os.WriteFile(pw, catest.Password, 0o600); err != nil {
		t.Fatal(err)
	}
	var out, errb bytes.Buffer
	if code := pkicli.Main(context.Background(), []string{"issue", "--dir", c.Dir, "--password-file", pw, "--role", "signer", "--name", "images-2027"}, &out, &errb); code != 0 {
		t.Fatalf("prov-pki issue: %d\n%s%s", code, out.String(), errb.String())
	}
	signer := fmt.Sprintf("signer: {cert: %q, key: %q}\n", c.IdentityCert(pki.RoleSigner, "images-2027"), c.IdentityKey(pki.RoleSigner, "images-2027"))
	core = coretest.Run(t, c, coretest.Config(t, c.Deployment, dir, signer), dir)
	after := fetch(core)

	roots, err := pki.LoadTrustBundle(c.RootCert())
	if err != nil {
		t.Fatal(err)
	}
	for name, tc := range map[string]struct {
		bundle []byte
		signer string
	}{"before": {before, "images"}, "after": {after, "images-2027"}} {
		v, _, err := signedimage.VerifyBytes(tc.bundle, signedimage.VerifyOptions{Roots: roots, Serial: d.Serial, MaxImageSize: imagespec.MaxImageSize})
		if err != nil || v.Signer.Name != tc.signer || v.Generation != 1 {
			t.Fatalf("%s the rotation: %+v %v", name, v, err)
		}
	}
}
