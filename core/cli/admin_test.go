package cli_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/fleetprov/prov/core/cli"
	"github.com/fleetprov/prov/core/contract/coreapi"
	"github.com/fleetprov/prov/core/coretest"
	"github.com/fleetprov/prov/internal/testenv/pgtest"
	"github.com/fleetprov/prov/pki"
	"github.com/fleetprov/prov/pki/ca/catest"
	"github.com/fleetprov/prov/pki/deployment"
)

// The shared step-ca and, for the tests on PostgreSQL, the private
// cluster (pgtest) stop when the tests end.
func TestMain(m *testing.M) { os.Exit(pgtest.After(catest.Main(m))) }

func TestAdmin(t *testing.T) {
	core := coretest.Start(t, "")
	d := core.Register(t, "rpi4", coretest.RPi4(1))
	id := core.IdentityDir(pki.RoleAdmin, deployment.DefaultAdminName)
	admin := func(args ...string) (int, string, string) {
		return run(append([]string{"admin", "--core", core.URL, "--identity", id}, args...)...)
	}
	code, out, errs := admin("list")
	if code != cli.ExitOK || !strings.Contains(out, d.Serial) || !strings.Contains(out, "SERIAL") {
		t.Fatalf("list: %d\n%s%s", code, out, errs)
	}
	motd := filepath.Join(t.TempDir(), "motd")
	if err := os.WriteFile(motd, []byte("welcome\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	code, out, errs = admin("set", d.Serial, "/etc/prov/data/site=lab-1", "--from", "/etc/prov/data/motd="+motd, "--json")
	var got coreapi.Device
	if code != cli.ExitOK || json.Unmarshal([]byte(out), &got) != nil || got.Generation != d.Generation+1 || got.Data["/etc/prov/data/motd"] != "welcome\n" {
		t.Fatalf("set: %d %+v\n%s%s", code, got, out, errs)
	}
	code, out, errs = admin("set-group", "default", "/etc/prov/data/site=hq")
	if code != cli.ExitOK || !strings.Contains(out, "version 1") {
		t.Fatalf("set-group: %d\n%s%s", code, out, errs)
	}
	code, out, _ = admin("show", d.Serial)
	if code != cli.ExitOK || !strings.Contains(out, "/etc/prov/data/site") || !strings.Contains(out, "(device)") {
		t.Fatalf("show: %d\n%s", code, out)
	}
	// Each issued certificate's key: in software, or in the TPM the proxy
	// attested (its endorsement key).
	cert := core.Enrolled(t, d.Serial, 0)
	tpmCert := coretest.DeviceCert(t, core.CA, d.Serial, 0)
	key, err := coreapi.KeySHA256(tpmCert.Leaf.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	ek := strings.Repeat("ab", 32)
	if _, err := core.Client(t, core.Proxy(t)).RecordIssued(t.Context(), d.Serial, coreapi.IssuedCertificate{Serial: tpmCert.Leaf.SerialNumber.String(),
		KeySHA256: key, NotBefore: tpmCert.Leaf.NotBefore, NotAfter: tpmCert.Leaf.NotAfter, EKSHA256: ek}); err != nil {
		t.Fatal(err)
	}
	code, out, _ = admin("show", d.Serial)
	for _, want := range []string{`issued certificate +serial ` + cert.Leaf.SerialNumber.String() + `, until \S+, by spiffe://\S+/proxy/\S+; key: software; replaced by a re-enrollment \S+, no longer accepted\n`,
		`issued certificate +serial ` + tpmCert.Leaf.SerialNumber.String() + `, until \S+, by \S+; key: TPM \(endorsement key sha256 ` + ek + `\)\n`} {
		if code != cli.ExitOK || !regexp.MustCompile(want).MatchString(out) {
			t.Fatalf("show lacks %q: %d\n%s", want, code, out)
		}
	}
	for _, args := range [][]string{{"reprovision", d.Serial}, {"revoke", d.Serial, "--reason", "test"}} {
		if code, out, errs := admin(args...); code != cli.ExitOK {
			t.Fatalf("%v: %d\n%s%s", args, code, out, errs)
		}
	}
	// This core has no revoker at step-ca: what is not revoked there shows.
	code, out, _ = admin("show", d.Serial)
	if code != cli.ExitOK || !strings.Contains(out, "revoked (2 not yet revoked at step-ca)") ||
		!regexp.MustCompile(`not yet revoked at step-ca +serial `+cert.Leaf.SerialNumber.String()).MatchString(out) {
		t.Fatalf("show of a revoked device with its certificate pending at step-ca: %d\n%s", code, out)
	}
	if code, out, _ = admin("list"); code != cli.ExitOK || !strings.Contains(out, "revoked (2 not yet revoked at step-ca)") {
		t.Fatalf("list: %d\n%s", code, out)
	}
	code, out, _ = admin("audit", d.Serial)
	for _, action := range []string{"register", "set data", "reprovision", "revoke"} {
		if code != cli.ExitOK || !strings.Contains(out, action) {
			t.Fatalf("audit lacks %q: %d\n%s", action, code, out)
		}
	}
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"set", d.Serial, "/etc/prov/data/x=1"}, cli.ExitError, "revoked"},
		{[]string{"set", "0000000000", "/etc/prov/data/x=1"}, cli.ExitError, "404"},
		{[]string{"set", d.Serial}, cli.ExitUsage, "nothing to change"},
		{[]string{"revoke", d.Serial}, cli.ExitUsage, "--reason"},
		{[]string{"frob"}, cli.ExitUsage, "unknown admin command"},
		{nil, cli.ExitUsage, "no command"},
	} {
		code, _, errs := admin(tc.args...)
		if code != tc.code || !strings.Contains(errs, tc.want) {
			t.Errorf("%v: exit %d, want %d naming %q:\n%s", tc.args, code, tc.code, tc.want, errs)
		}
	}
	// Not an admin identity.
	code, _, errs = run("admin", "--core", core.URL, "--identity", core.IdentityDir(pki.RoleProxy, catest.Proxy), "list")
	if code != cli.ExitError || !strings.Contains(errs, "not an admin") {
		t.Fatalf("proxy identity: %d %s", code, errs)
	}
}

// The admin's usage lists its commands; a command line is checked before
// the identity is read or core is contacted.
func TestAdminUsage(t *testing.T) {
	code, out, errs := run("admin", "-h")
	if code != cli.ExitOK || errs != "" || !strings.HasPrefix(out, "usage: prov-core admin --core URL --identity DIR COMMAND") {
		t.Fatalf("admin -h: %d\n%s\n%s", code, out, errs)
	}
	for _, c := range []string{"list", "show", "set", "set-group", "reprovision", "revoke", "audit", "backup"} {
		if !strings.Contains(out, "\n  "+c+" ") {
			t.Errorf("admin -h does not list %s:\n%s", c, out)
		}
	}
	if !strings.Contains(out, "\n  -reason string\n") {
		t.Errorf("admin -h does not list the flags:\n%s", out)
	}
	noIdentity := []string{"admin", "--core", "https://core.example:8443", "--identity", filepath.Join(t.TempDir(), "none")}
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"frob"}, cli.ExitUsage, `unknown admin command "frob"`},
		{[]string{"--json"}, cli.ExitUsage, "no command"},
		{[]string{"list", "--frob"}, cli.ExitUsage, "not defined: -frob"},
		{[]string{"list"}, cli.ExitError, "--identity"},
		// No --core or --identity needed to ask, nor to be told the command is wrong.
		{[]string{"--core", "", "--identity", "", "help"}, cli.ExitOK, ""},
		{[]string{"--core", "", "--identity", "", "list", "--help"}, cli.ExitOK, ""},
		{[]string{"--core", "", "--identity", "", "frob"}, cli.ExitUsage, `unknown admin command "frob"`},
	} {
		code, _, errs := run(append(noIdentity, tc.args...)...)
		if code != tc.code || !strings.Contains(errs, tc.want) {
			t.Errorf("%v: exit %d, want %d naming %q:\n%s", tc.args, code, tc.code, tc.want, errs)
		}
	}
}
