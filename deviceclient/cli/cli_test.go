package cli_test

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fleetprov/prov/core/contract/imagespec"
	"github.com/fleetprov/prov/core/imagebuild"
	"github.com/fleetprov/prov/deviceclient/cli"
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

func TestVerifyAndInspect(t *testing.T) {
	d := catest.NewPKI(t)
	s, err := signedimage.LoadSigner(d.IdentityCert(pki.RoleSigner, deployment.DefaultSignerName), d.IdentityKey(pki.RoleSigner, deployment.DefaultSignerName))
	if err != nil {
		t.Fatal(err)
	}
	rec := &imagebuild.Record{Serial: "1a2b3c4d5e", Generation: 5, IssuedAt: time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC),
		Hostname: "h1", MQTTClientID: "c1", MQTTGroupID: "g1", Data: map[string]string{"/etc/prov/data/x": "y\n"}}
	bundle, _, err := imagebuild.BuildBundle(rec, imagespec.DefaultRules(), s)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	good := filepath.Join(dir, "good")
	tampered := filepath.Join(dir, "tampered")
	if err := os.WriteFile(good, bundle, 0o600); err != nil {
		t.Fatal(err)
	}
	bad := append([]byte{}, bundle...)
	bad[len(bad)-100] ^= 1
	if err := os.WriteFile(tampered, bad, 0o600); err != nil {
		t.Fatal(err)
	}
	base := []string{"--root", d.RootCert()}

	code, stdout, stderr := run(append([]string{"verify", "--bundle", good, "--serial", "1a2b3c4d5e"}, base...)...)
	if code != cli.ExitOK || !strings.Contains(stdout, "accepted") || !strings.Contains(stdout, "generation  5") {
		t.Fatalf("verify: exit %d\n%s%s", code, stdout, stderr)
	}
	code, stdout, _ = run(append([]string{"inspect", "--bundle", good, "--serial", "1a2b3c4d5e", "--json"}, base...)...)
	var r struct {
		Verdict string
		Entries []struct{ Path string }
	}
	if err := json.Unmarshal([]byte(stdout), &r); err != nil || code != cli.ExitOK || r.Verdict != "accepted" || len(r.Entries) < 8 {
		t.Fatalf("inspect --json: exit %d, %v\n%s", code, err, stdout)
	}

	for _, tc := range []struct {
		name string
		args []string
		code int
		want string
	}{
		{"tampered", []string{"verify", "--bundle", tampered, "--serial", "1a2b3c4d5e"}, cli.ExitRefused, "digest mismatch (step 24 of docs/image-format.md)"},
		{"another device", []string{"verify", "--bundle", good, "--serial", "0000000001"}, cli.ExitRefused, "wrong device (step 19 of docs/image-format.md)"},
		{"rollback", []string{"verify", "--bundle", good, "--serial", "1a2b3c4d5e", "--min-generation", "6"}, cli.ExitRefused, "rollback (step 20 of docs/image-format.md): generation 5 is below the high-water mark 6"},
		{"data outside the device's prefixes", []string{"verify", "--bundle", good, "--serial", "1a2b3c4d5e", "--allow-prefix", "/etc/app/"}, cli.ExitRefused, "/etc/prov/data"},
		{"bad serial flag", []string{"verify", "--bundle", good, "--serial", "xyz"}, cli.ExitUsage, "--serial"},
		{"no bundle", []string{"verify", "--serial", "1a2b3c4d5e"}, cli.ExitUsage, "--bundle is required"},
		{"missing bundle file", []string{"verify", "--bundle", filepath.Join(dir, "nope"), "--serial", "1a2b3c4d5e"}, cli.ExitError, "--bundle"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := tc.args
			if tc.code != cli.ExitUsage || len(args) > 1 {
				args = append(args, base...)
			}
			code, _, stderr := run(args...)
			if code != tc.code || !strings.Contains(stderr, tc.want) {
				t.Fatalf("exit %d (want %d); stderr does not name %q:\n%s", code, tc.code, tc.want, stderr)
			}

			// A refusal of the pre-mount inspection names its check, as the
			// specification and the conformance suite do.
			outside := append([]string{"verify", "--bundle", good, "--serial", "1a2b3c4d5e", "--allow-prefix", "/etc/app/"}, base...)
			if code, stdout, _ := run(outside...); code != cli.ExitRefused || !strings.Contains(stdout, "refused: bad image, check entry-path (step 25 of docs/image-format.md)") {
				t.Errorf("an inspection refusal: exit %d\n%s", code, stdout)
			}
			code, stdout, _ = run(append(outside, "--json")...)
			var r struct{ Verdict, Error, Check string }
			if err := json.Unmarshal([]byte(stdout), &r); err != nil || code != cli.ExitRefused || r.Verdict != "refused" || r.Error != "bad image" || r.Check != "entry-path" {
				t.Errorf("an inspection refusal, --json: exit %d %v\n%s", code, err, stdout)
			}
		})
	}
}
