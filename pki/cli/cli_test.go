package cli_test

import (
	"bytes"
	"context"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.step.sm/crypto/pemutil"

	"github.com/fleetprov/prov/internal/testenv/pgtest"
	"github.com/fleetprov/prov/pki"
	"github.com/fleetprov/prov/pki/ca/catest"
	"github.com/fleetprov/prov/pki/cli"
	"github.com/fleetprov/prov/pki/token"
)

// run runs prov-pki in this process.
func run(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	code = cli.Main(context.Background(), args, &out, &errb)
	return code, out.String(), errb.String()
}

func passwordFile(t *testing.T, pw string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "password")
	if err := os.WriteFile(p, []byte(pw+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

const testPassword = "a long enough deployment password"

func TestMain(m *testing.M) {
	code := pgtest.After(catest.Main(m))
	if cliPKI.dir != "" {
		_ = os.RemoveAll(filepath.Dir(cliPKI.dir))
	}
	os.Exit(code)
}

// cliPKI is one PKI made by the command line, shared by the tests that only
// read it.
var cliPKI struct {
	once        sync.Once
	dir, pwFile string
	err         error
}

func sharedCLIPKI(t *testing.T) (dir, pwFile string) {
	t.Helper()
	cliPKI.once.Do(func() {
		base, err := os.MkdirTemp("", "cli-pki-")
		if err != nil {
			cliPKI.err = err
			return
		}
		cliPKI.dir, cliPKI.pwFile = filepath.Join(base, "pki"), filepath.Join(base, "password")
		if cliPKI.err = os.WriteFile(cliPKI.pwFile, []byte(testPassword+"\n"), 0o600); cliPKI.err != nil {
			return
		}
		var out, errb bytes.Buffer
		if code := cli.Main(context.Background(), initArgs(cliPKI.dir, cliPKI.pwFile), &out, &errb); code != cli.ExitOK {
			cliPKI.err = fmt.Errorf("init: exit %d\n%s%s", code, out.String(), errb.String())
		}
	})
	if cliPKI.err != nil {
		t.Fatal(cliPKI.err)
	}
	return cliPKI.dir, cliPKI.pwFile
}

func initArgs(dir, pwFile string, extra ...string) []string {
	return append([]string{"init", "--dir", dir, "--password-file", pwFile, "--trust-domain", "fleet.test",
		"--proxy", "factory1=proxy1.factory.lan,10.1.0.5", "--proxy", "factory2",
		"--ca-address", "127.0.0.1:19000"}, extra...)
}

func initPKI(t *testing.T, extra ...string) (dir, pwFile string) {
	t.Helper()
	dir = filepath.Join(t.TempDir(), "pki")
	pwFile = passwordFile(t, testPassword)
	code, stdout, stderr := run(t, initArgs(dir, pwFile, extra...)...)
	if code != cli.ExitOK {
		t.Fatalf("init: exit %d\n%s%s", code, stdout, stderr)
	}
	return dir, pwFile
}

func TestInitWritesAProtectedPKI(t *testing.T) {
	dir, _ := sharedCLIPKI(t)

	// Every directory 0700; every private key, provisioner key, password
	// and the CA configuration 0600.
	secret := func(name string) bool {
		return strings.HasSuffix(name, ".key") || name == "key.pem" || strings.HasSuffix(name, ".jwe") ||
			strings.HasSuffix(name, ".password") || name == "ca.json" || strings.HasSuffix(name, ".db")
	}
	nkeys := 0
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		switch {
		case d.IsDir() && fi.Mode().Perm() != 0o700:
			t.Errorf("directory %s has mode %04o; want 0700", path, fi.Mode().Perm())
		case !d.IsDir() && secret(d.Name()):
			nkeys++
			if fi.Mode().Perm() != 0o600 {
				t.Errorf("secret %s has mode %04o; want 0600", path, fi.Mode().Perm())
			}
			if pfi, err := os.Stat(filepath.Dir(path)); err != nil || pfi.Mode().Perm() != 0o700 {
				t.Errorf("secret %s is in a directory that is not 0700", path)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// root, intermediate, admin provisioner, 2 proxy provisioners + passwords,
	// ca.json, db, and the keys of core, signer, admin and 2 proxies.
	if nkeys < 13 {
		t.Errorf("found %d secret files; the walk missed some", nkeys)
	}

	// The root and intermediate keys are encrypted with the deployment
	// password, and only with it.
	for _, f := range []string{"offline/root_ca.key", "ca/intermediate_ca.key"} {
		data, err := os.ReadFile(filepath.Join(dir, f))
		if err != nil {
			t.Fatal(err)
		}
		block, _ := pem.Decode(data)
		if block == nil || block.Type != "ENCRYPTED PRIVATE KEY" {
			t.Errorf("%s is not an encrypted PKCS#8 key", f)
			continue
		}
		if _, err := pemutil.ParseKey(data, pemutil.WithPassword([]byte("wrong password"))); err == nil {
			t.Errorf("%s decrypts with a wrong password", f)
		}
		if _, err := pemutil.ParseKey(data, pemutil.WithPassword([]byte(testPassword))); err != nil {
			t.Errorf("%s does not decrypt with the deployment password: %v", f, err)
		}
	}
	// The admin provisioner key is encrypted with the deployment password;
	// each proxy's with its own, not the deployment's.
	if _, err := token.Load("admin", filepath.Join(dir, "ca/admin_provisioner.jwe"), []byte(testPassword)); err != nil {
		t.Errorf("admin provisioner: %v", err)
	}
	if _, err := token.Load("admin", filepath.Join(dir, "ca/admin_provisioner.jwe"), []byte("wrong")); !errors.Is(err, token.ErrBadKey) {
		t.Errorf("admin provisioner with a wrong password: %v", err)
	}
	proxyKey := filepath.Join(dir, "proxy/factory1/provisioner.jwe")
	proxyPW, err := pki.ReadPasswordFile(filepath.Join(dir, "proxy/factory1/provisioner.password"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := token.Load("proxy-factory1", proxyKey, proxyPW); err != nil {
		t.Errorf("proxy provisioner with its password: %v", err)
	}
	if _, err := token.Load("proxy-factory1", proxyKey, []byte(testPassword)); err == nil {
		t.Error("the proxy provisioner key decrypts with the deployment password")
	}

	// The proxy's server certificate names the hosts given.
	certs, err := pki.ParseCertificates(mustRead(t, filepath.Join(dir, "proxy/factory1/cert.pem")))
	if err != nil {
		t.Fatal(err)
	}
	if got := certs[0].DNSNames; len(got) != 1 || got[0] != "proxy1.factory.lan" || len(certs[0].IPAddresses) != 1 {
		t.Errorf("proxy certificate names %v %v", got, certs[0].IPAddresses)
	}
}

func TestInitRefusesToOverwrite(t *testing.T) {
	dir, pwFile := initPKI(t)
	root := mustRead(t, filepath.Join(dir, "certs/root_ca.crt"))
	code, _, stderr := run(t, "init", "--dir", dir, "--password-file", pwFile, "--trust-domain", "fleet.test", "--proxy", "p")
	if code != cli.ExitError || !strings.Contains(stderr, "refusing to overwrite") {
		t.Fatalf("second init: exit %d: %s", code, stderr)
	}
	if !bytes.Equal(root, mustRead(t, filepath.Join(dir, "certs/root_ca.crt"))) {
		t.Fatal("a refused init changed the root")
	}

	code, stdout, stderr := run(t, "init", "--dir", dir, "--password-file", pwFile, "--trust-domain", "fleet.test", "--proxy", "p", "--force")
	if code != cli.ExitOK {
		t.Fatalf("init --force: exit %d: %s", code, stderr)
	}
	if bytes.Equal(root, mustRead(t, filepath.Join(dir, "certs/root_ca.crt"))) {
		t.Fatal("init --force kept the old root")
	}
	old, _ := filepath.Glob(dir + ".replaced-*")
	if len(old) != 1 || !bytes.Equal(root, mustRead(t, filepath.Join(old[0], "certs/root_ca.crt"))) {
		t.Fatalf("the replaced PKI was not kept aside (%v); output:\n%s", old, stdout)
	}
}

func TestBadInput(t *testing.T) {
	dir, pwFile := sharedCLIPKI(t)
	shortPW := passwordFile(t, "short")
	wrongPW := passwordFile(t, "a wrong but long password")
	missing := filepath.Join(t.TempDir(), "missing")
	fresh := func() string { return filepath.Join(t.TempDir(), "pki") }

	corrupt := func(rel, content string) string {
		t.Helper()
		d := filepath.Join(t.TempDir(), "pki")
		copyTree(t, dir, d)
		if err := os.WriteFile(filepath.Join(d, rel), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return d
	}
	noCAConfig := func() string {
		d := filepath.Join(t.TempDir(), "pki")
		copyTree(t, dir, d)
		if err := os.Remove(filepath.Join(d, "ca/ca.json")); err != nil {
			t.Fatal(err)
		}
		return d
	}

	for _, tc := range []struct {
		name string
		args []string
		code int
		want string // in stderr
	}{
		{"no command", nil, cli.ExitUsage, "usage"},
		{"unknown command", []string{"frobnicate"}, cli.ExitUsage, `unknown command "frobnicate"`},
		{"init without password file", []string{"init", "--dir", fresh(), "--trust-domain", "fleet.test", "--proxy", "p"}, cli.ExitUsage, "--password-file is required"},
		{"init with a missing password file", []string{"init", "--dir", fresh(), "--password-file", missing, "--trust-domain", "fleet.test", "--proxy", "p"}, cli.ExitError, "--password-file: bad password file"},
		{"init with a short password", []string{"init", "--dir", fresh(), "--password-file", shortPW, "--trust-domain", "fleet.test", "--proxy", "p"}, cli.ExitError, "use at least 12"},
		{"init without trust domain", []string{"init", "--dir", fresh(), "--password-file", pwFile, "--proxy", "p"}, cli.ExitUsage, "--trust-domain is required"},
		{"init with a bad trust domain", []string{"init", "--dir", fresh(), "--password-file", pwFile, "--trust-domain", "Fleet_Test", "--proxy", "p"}, cli.ExitError, "--trust-domain"},
		{"init without proxy", []string{"init", "--dir", fresh(), "--password-file", pwFile, "--trust-domain", "fleet.test"}, cli.ExitUsage, "--proxy is required"},
		{"init with a bad proxy name", []string{"init", "--dir", fresh(), "--password-file", pwFile, "--trust-domain", "fleet.test", "--proxy", "Bad Name"}, cli.ExitError, `--proxy: malformed identity: name "Bad Name"`},
		{"init with a proxy named twice", []string{"init", "--dir", fresh(), "--password-file", pwFile, "--trust-domain", "fleet.test", "--proxy", "p", "--proxy", "p"}, cli.ExitError, `"p" named twice`},
		{"init with a bad proxy host", []string{"init", "--dir", fresh(), "--password-file", pwFile, "--trust-domain", "fleet.test", "--proxy", "p=*.evil"}, cli.ExitError, `--proxy p: host "*.evil"`},
		{"init with a bad CA address", []string{"init", "--dir", fresh(), "--password-file", pwFile, "--trust-domain", "fleet.test", "--proxy", "p", "--ca-address", "9000"}, cli.ExitError, "--ca-address"},
		{"init with a tiny device lifetime", []string{"init", "--dir", fresh(), "--password-file", pwFile, "--trust-domain", "fleet.test", "--proxy", "p", "--device-cert-lifetime", "1s"}, cli.ExitError, "--device-cert-lifetime"},
		{"init with a stray argument", []string{"init", "--dir", fresh(), "oops"}, cli.ExitUsage, `unexpected argument "oops"`},
		{"ca with a wrong password", []string{"ca", "--dir", dir, "--password-file", wrongPW}, cli.ExitError, "wrong password"},
		{"ca without PKI", []string{"ca", "--dir", missing, "--password-file", pwFile}, cli.ExitError, "is " + missing + " a PKI directory"},
		{"ca with a corrupt manifest", []string{"ca", "--dir", corrupt("pki.json", "{not json"), "--password-file", pwFile}, cli.ExitError, "bad PKI manifest: not valid JSON"},
		{"ca with a manifest of unknown fields", []string{"ca", "--dir", corrupt("pki.json", `{"version":1,"evil":true}`), "--password-file", pwFile}, cli.ExitError, `unknown field "evil"`},
		{"ca with a corrupt configuration", []string{"ca", "--dir", corrupt("ca/ca.json", "{not json"), "--password-file", pwFile}, cli.ExitError, "ca.json"},
		{"ca without configuration", []string{"ca", "--dir", noCAConfig(), "--password-file", pwFile}, cli.ExitError, "ca.json"},
		{"issue for an unknown proxy", []string{"issue", "--dir", dir, "--password-file", pwFile, "--role", "proxy", "--name", "nope"}, cli.ExitError, `unknown proxy "nope"`},
		{"issue a device", []string{"issue", "--dir", dir, "--password-file", pwFile, "--role", "device", "--name", "1a2b3c4d5e"}, cli.ExitUsage, "devices enroll through a proxy"},
		{"issue with a bad role", []string{"issue", "--dir", dir, "--password-file", pwFile, "--role", "root", "--name", "x"}, cli.ExitUsage, `--role "root"`},
		{"issue with a wrong password", []string{"issue", "--dir", dir, "--password-file", wrongPW, "--role", "core", "--name", "x"}, cli.ExitError, "wrong password"},
		{"issue with hosts for an admin", []string{"issue", "--dir", dir, "--password-file", pwFile, "--role", "admin", "--name", "x", "--host", "a.example"}, cli.ExitError, "carries no host names"},
		{"issue over an existing identity", []string{"issue", "--dir", dir, "--password-file", pwFile, "--role", "core", "--name", "core"}, cli.ExitError, "already exists"},
		{"widen without a host", []string{"widen", "--dir", dir, "--password-file", pwFile}, cli.ExitUsage, "--host is required"},
		{"widen with a bad host", []string{"widen", "--dir", dir, "--password-file", pwFile, "--host", "*.evil"}, cli.ExitError, `--host: host "*.evil"`},
		{"widen with a wrong password", []string{"widen", "--dir", dir, "--password-file", wrongPW, "--host", "new.fleet.test"}, cli.ExitError, "wrong password"},
		{"widen without the root key", []string{"widen", "--dir", dir, "--password-file", pwFile, "--host", "new.fleet.test", "--root-key", missing}, cli.ExitError, "bring the root key back from offline storage"},
		{"widen with another key as the root's", []string{"widen", "--dir", dir, "--password-file", pwFile, "--host", "new.fleet.test", "--root-key", filepath.Join(dir, "ca/intermediate_ca.key")}, cli.ExitError, "not the key of this PKI's root certificate"},
		{"revoke without a target", []string{"revoke", "--dir", dir, "--password-file", pwFile}, cli.ExitUsage, "exactly one of --cert and --serial"},
		{"revoke a bad serial", []string{"revoke", "--dir", dir, "--password-file", pwFile, "--serial", "12ab"}, cli.ExitUsage, `--serial "12ab"`},
		{"revoke an unreadable certificate", []string{"revoke", "--dir", dir, "--password-file", pwFile, "--cert", missing}, cli.ExitError, "--cert"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, _, stderr := run(t, tc.args...)
			if code != tc.code || !strings.Contains(stderr, tc.want) {
				t.Fatalf("exit %d, want %d; stderr does not name %q:\n%s", code, tc.code, tc.want, stderr)
			}
		})
	}
}

func TestIssueAndRevokeAgainstTheRunningCA(t *testing.T) {
	c := catest.Start(t) // its own: it replaces identities
	pwFile := passwordFile(t, string(catest.Password))
	code, stdout, stderr := run(t, "issue", "--dir", c.Dir, "--password-file", pwFile, "--role", "core", "--name", "core2", "--host", "localhost")
	if code != cli.ExitOK {
		t.Fatalf("issue: exit %d: %s", code, stderr)
	}
	if !strings.Contains(stdout, "spiffe://fleet.test/core/core2") {
		t.Errorf("issue output does not name the identity:\n%s", stdout)
	}
	certFile := filepath.Join(c.Dir, "core/core2/cert.pem")
	kp, err := pki.LoadKeyPair(certFile, filepath.Join(c.Dir, "core/core2/key.pem"))
	if err != nil {
		t.Fatalf("issued pair does not load: %v", err)
	}
	if id, err := pki.IdentityOf(kp.Leaf()); err != nil || id.Name != "core2" {
		t.Fatalf("issued identity %v %v", id, err)
	}

	// Rotation: --force replaces and keeps the old one aside.
	code, stdout, stderr = run(t, "issue", "--dir", c.Dir, "--password-file", pwFile, "--role", "core", "--name", "core2", "--host", "localhost", "--force")
	if code != cli.ExitOK {
		t.Fatalf("issue --force: exit %d: %s", code, stderr)
	}
	old, _ := filepath.Glob(filepath.Join(c.Dir, "core/core2.replaced-*/cert.pem"))
	if len(old) != 1 || !strings.Contains(stdout, "prov-pki revoke") {
		t.Fatalf("old identity kept at %v; output:\n%s", old, stdout)
	}

	code, stdout, stderr = run(t, "revoke", "--dir", c.Dir, "--password-file", pwFile, "--cert", old[0], "--reason", "rotated")
	if code != cli.ExitOK || !strings.Contains(stdout, "Revoked") {
		t.Fatalf("revoke: exit %d: %s%s", code, stdout, stderr)
	}
	code, _, stderr = run(t, "revoke", "--dir", c.Dir, "--password-file", pwFile, "--cert", old[0])
	if code != cli.ExitError || !strings.Contains(stderr, "already revoked") {
		t.Fatalf("second revoke: exit %d: %s", code, stderr)
	}
	// A proxy's re-issue keeps its provisioner key.
	code, _, stderr = run(t, "issue", "--dir", c.Dir, "--password-file", pwFile, "--role", "proxy", "--name", catest.Proxy, "--force")
	if code != cli.ExitOK {
		t.Fatalf("re-issue proxy: exit %d: %s", code, stderr)
	}
	if _, err := c.ProxyProvisioner(catest.Proxy); err != nil {
		t.Fatalf("proxy provisioner lost by re-issue: %v", err)
	}
	// A console certificate, issued again over the one of init: the
	// hosts asked for, no identity.
	code, stdout, stderr = run(t, "issue", "--dir", c.Dir, "--password-file", pwFile, "--role", "console", "--name", catest.Proxy,
		"--host", "localhost", "--host", "127.0.0.1", "--force")
	if code != cli.ExitOK || !strings.Contains(stdout, "no identity") {
		t.Fatalf("issue --role console: exit %d: %s%s", code, stdout, stderr)
	}
	con, err := pki.LoadKeyPair(c.ConsoleCert(catest.Proxy), c.ConsoleKey(catest.Proxy))
	if err != nil {
		t.Fatal(err)
	}
	roots, err := pki.LoadTrustBundle(c.RootCert())
	if err != nil {
		t.Fatal(err)
	}
	if err := roots.VerifyWebServer(con.Chain(), []string{"localhost", "127.0.0.1"}, time.Time{}); err != nil {
		t.Errorf("the issued console certificate: %v", err)
	}
	if _, err := pki.IdentityOf(con.Leaf()); !errors.Is(err, pki.ErrNoIdentity) {
		t.Errorf("IdentityOf(console certificate) = %v; want ErrNoIdentity", err)
	}
	code, _, stderr = run(t, "issue", "--dir", c.Dir, "--password-file", pwFile, "--role", "console", "--name", catest.Proxy, "--force")
	if code != cli.ExitError || !strings.Contains(stderr, "name the proxy's hosts") {
		t.Errorf("issue --role console without --host: exit %d: %s", code, stderr)
	}
	// The CA is down: a clear error, not a hang.
	code, _, stderr = run(t, "issue", "--dir", c.Dir, "--password-file", pwFile, "--role", "admin", "--name", "bob", "--ca-url", "https://127.0.0.1:1")
	if code != cli.ExitError || !strings.Contains(stderr, "127.0.0.1:1") {
		t.Fatalf("issue to a dead CA: exit %d: %s", code, stderr)
	}
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// copyTree copies a PKI directory; the copy's ca.json still points at the
// original's files, which is what the corrupt-manifest cases need.
func copyTree(t *testing.T, src, dst string) {
	t.Helper()
	err := filepath.WalkDir(src, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, path)
		target := filepath.Join(dst, rel)
		if d.IsDir() {
			return os.MkdirAll(target, 0o700)
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		return os.WriteFile(target, b, 0o600)
	})
	if err != nil {
		t.Fatal(err)
	}
}
