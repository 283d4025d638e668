package cli_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/fleetprov/prov/core/cli"
	"github.com/fleetprov/prov/pki"
	"github.com/fleetprov/prov/pki/ca/catest"
	"github.com/fleetprov/prov/pki/deployment"
	"github.com/fleetprov/prov/pki/signedimage"
)

func run(args ...string) (int, string, string) {
	var out, errb bytes.Buffer
	code := cli.Main(context.Background(), args, &out, &errb)
	return code, out.String(), errb.String()
}

const recordJSON = `{"serial":"1a2b3c4d5e","generation":2,"issuedAt":"2026-11-01T12:00:00Z",
 "hostname":"dev-1a2b3c4d5e","mqttClientId":"dev-1a2b3c4d5e","mqttGroupId":"line-a",
 "data":{"/etc/prov/data/broker-url":"mqtts://broker:8883\n"}}`

func TestImageBuild(t *testing.T) {
	d := catest.NewPKI(t)
	dir := t.TempDir()
	rec := filepath.Join(dir, "record.json")
	if err := os.WriteFile(rec, []byte(recordJSON), 0o600); err != nil {
		t.Fatal(err)
	}
	cert := d.IdentityCert(pki.RoleSigner, deployment.DefaultSignerName)
	key := d.IdentityKey(pki.RoleSigner, deployment.DefaultSignerName)
	out, img := filepath.Join(dir, "bundle"), filepath.Join(dir, "image.squashfs")
	code, stdout, stderr := run("image", "build", "--record", rec, "--signer-cert", cert, "--signer-key", key, "--out", out, "--image-out", img)
	if code != cli.ExitOK {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	if !strings.Contains(stdout, "generation 2") {
		t.Errorf("output: %s", stdout)
	}
	bundle, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	roots, err := pki.LoadTrustBundle(d.RootCert())
	if err != nil {
		t.Fatal(err)
	}
	_, verified, err := signedimage.VerifyBytes(bundle, signedimage.VerifyOptions{Roots: roots, Serial: "1a2b3c4d5e"})
	if err != nil {
		t.Fatalf("the bundle does not verify: %v", err)
	}
	bare, err := os.ReadFile(img)
	if err != nil || !bytes.Equal(bare, verified) {
		t.Fatalf("--image-out differs from the signed image (%v)", err)
	}

	badRecord := filepath.Join(dir, "bad.json")
	if err := os.WriteFile(badRecord, []byte(strings.Replace(recordJSON, `"hostname":"dev-1a2b3c4d5e"`, `"hostname":"Bad Host"`, 1)), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		args []string
		code int
		want string
	}{
		{"no record", []string{"image", "build", "--signer-cert", cert, "--signer-key", key, "--out", out}, cli.ExitUsage, "--record is required"},
		{"bad record field", []string{"image", "build", "--record", badRecord, "--signer-cert", cert, "--signer-key", key, "--out", out}, cli.ExitError, "hostname"},
		{"data outside the prefix", []string{"image", "build", "--record", rec, "--signer-cert", cert, "--signer-key", key, "--out", out, "--allow-prefix", "/etc/other/"}, cli.ExitError, "/etc/prov/data/broker-url"},
		{"a core certificate as signer", []string{"image", "build", "--record", rec, "--signer-cert", d.IdentityCert(pki.RoleCore, "core"), "--signer-key", d.IdentityKey(pki.RoleCore, "core"), "--out", out}, cli.ExitError, "not Ed25519"},
		{"serve without config", []string{"serve"}, cli.ExitUsage, "--config is required"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, _, stderr := run(tc.args...)
			if code != tc.code || !strings.Contains(stderr, tc.want) {
				t.Fatalf("exit %d (want %d), stderr does not name %q:\n%s", code, tc.code, tc.want, stderr)
			}
		})
	}
}
