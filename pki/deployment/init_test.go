package deployment_test

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/fleetprov/prov/pki"
	"github.com/fleetprov/prov/pki/ca/catest"
	"github.com/fleetprov/prov/pki/deployment"
)

// A failure after files are written (here: a clock so far back that the new
// CA has expired when step-ca loads it) leaves nothing behind, and a
// replaced PKI comes back.
func TestInitFailureLeavesNothing(t *testing.T) {
	opts := func(dir string, force bool) deployment.InitOptions {
		return deployment.InitOptions{Dir: dir, Password: catest.Password, TrustDomain: catest.TrustDomain,
			Proxies: []deployment.ProxySpec{{Name: "p"}}, Force: force, Now: time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)}
	}
	dir := filepath.Join(t.TempDir(), "pki")
	if _, err := deployment.Init(context.Background(), opts(dir, false)); err == nil {
		t.Fatal("init with an expired CA succeeded")
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a failed init left %s behind (%v)", dir, err)
	}

	// An existing PKI (any non-empty directory will do) replaced with
	// --force comes back when the new one fails.
	existing := filepath.Join(t.TempDir(), "pki")
	if err := os.MkdirAll(existing, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(existing, "pki.json"), []byte("old"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := deployment.Init(context.Background(), opts(existing, true))
	if err == nil {
		t.Fatal("init --force with an expired CA succeeded")
	}
	t.Logf("failed as expected: %v", err)
	if got, err := os.ReadFile(filepath.Join(existing, "pki.json")); err != nil || string(got) != "old" {
		t.Fatalf("the directory replaced by a failed init --force was not put back: %q %v", got, err)
	}
	if left, _ := filepath.Glob(existing + ".replaced-*"); len(left) != 0 {
		t.Fatalf("left behind: %v", left)
	}
}

func TestOpenRefusesBadManifests(t *testing.T) {
	good := mustRead(t, catest.Shared(t).ManifestFile())
	d := deployment.Layout{Dir: t.TempDir()}
	if err := os.WriteFile(d.ManifestFile(), good, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := deployment.Open(d.Dir); err != nil {
		t.Fatalf("a copy of a good manifest does not open: %v", err)
	}
	for name, content := range map[string]string{
		"empty":              "",
		"not JSON":           "{",
		"wrong version":      `{"version":2}`,
		"bad trust domain":   string(bytes.Replace(good, []byte(`"fleet.test"`), []byte(`"FLEET"`), 1)),
		"http CA URL":        string(bytes.Replace(good, []byte(`"https://`), []byte(`"http://`), 1)),
		"two JSON documents": string(good) + string(good),
	} {
		t.Run(name, func(t *testing.T) {
			if err := os.WriteFile(d.ManifestFile(), []byte(content), 0o644); err != nil {
				t.Fatal(err)
			}
			if _, err := deployment.Open(d.Dir); !errors.Is(err, deployment.ErrBadManifest) {
				t.Fatalf("Open: %v; want ErrBadManifest", err)
			}
		})
	}
}

func TestFirstIdentities(t *testing.T) {
	d := catest.Shared(t).Deployment
	bundle, err := pki.LoadTrustBundle(d.RootCert())
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		role pki.Role
		name string
	}{{pki.RoleCore, deployment.DefaultCoreName}, {pki.RoleSigner, deployment.DefaultSignerName}, {pki.RoleAdmin, deployment.DefaultAdminName}, {pki.RoleProxy, catest.Proxy}} {
		kp, err := pki.LoadKeyPair(d.IdentityCert(tc.role, tc.name), d.IdentityKey(tc.role, tc.name))
		if err != nil {
			t.Fatalf("%s: %v", tc.role, err)
		}
		certs, err := pki.ParseCertificates(mustRead(t, d.IdentityCert(tc.role, tc.name)))
		if err != nil {
			t.Fatal(err)
		}
		id, err := bundle.Verify(certs, pki.VerifyOptions{KeyUsage: tc.role.ExtKeyUsage(), Roles: []pki.Role{tc.role}})
		if err != nil || id.Name != tc.name {
			t.Errorf("%s/%s: %v %v", tc.role, tc.name, id, err)
		}
		if tc.role == pki.RoleSigner && kp.Leaf().PublicKeyAlgorithm.String() != "Ed25519" {
			t.Errorf("signer key is %v; want Ed25519", kp.Leaf().PublicKeyAlgorithm)
		}
		if !bytes.Equal(mustRead(t, d.IdentityRoot(tc.role, tc.name)), mustRead(t, d.RootCert())) {
			t.Errorf("%s directory has no copy of the root", tc.role)
		}
	}
}

// Init issues each proxy a console certificate beside its identity: the
// proxy's hosts, serverAuth (and clientAuth, for step-ca's renewal), and no
// URI SAN, so that it is no identity anyone accepts: IdentityOf and every
// identity check (core's, the broker's, the renewal's) refuse it.
func TestConsoleCertificate(t *testing.T) {
	d := catest.Shared(t).Deployment
	bundle, err := pki.LoadTrustBundle(d.RootCert())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pki.LoadKeyPair(d.ConsoleCert(catest.Proxy), d.ConsoleKey(catest.Proxy)); err != nil {
		t.Fatal(err)
	}
	chain, err := pki.ParseCertificates(mustRead(t, d.ConsoleCert(catest.Proxy)))
	if err != nil {
		t.Fatal(err)
	}
	leaf := chain[0]
	if err := bundle.VerifyWebServer(chain, deployment.DefaultHosts, time.Time{}); err != nil {
		t.Fatalf("the console certificate does not verify for %v: %v", deployment.DefaultHosts, err)
	}
	if len(leaf.URIs) != 0 || leaf.Subject.CommonName != "console/"+catest.Proxy {
		t.Errorf("console certificate: URIs %v, CN %q; want none and console/%s", leaf.URIs, leaf.Subject.CommonName, catest.Proxy)
	}
	if _, err := pki.IdentityOf(leaf); !errors.Is(err, pki.ErrNoIdentity) {
		t.Errorf("IdentityOf(console certificate) = %v; want ErrNoIdentity", err)
	}
	for _, role := range pki.Roles {
		if _, err := bundle.Verify(chain, pki.VerifyOptions{KeyUsage: x509.ExtKeyUsageClientAuth, Roles: []pki.Role{role}}); !errors.Is(err, pki.ErrNoIdentity) {
			t.Errorf("verified as a %s client: %v; want ErrNoIdentity", role, err)
		}
	}
	if err := bundle.VerifyWebServer(chain, []string{"elsewhere.example"}, time.Time{}); !errors.Is(err, pki.ErrNotWebServer) {
		t.Errorf("verified for a host it does not name: %v", err)
	}
	// The proxy's identity is not a console certificate: it names one.
	ident, err := pki.ParseCertificates(mustRead(t, d.IdentityCert(pki.RoleProxy, catest.Proxy)))
	if err != nil {
		t.Fatal(err)
	}
	if err := bundle.VerifyWebServer(ident, deployment.DefaultHosts, time.Time{}); !errors.Is(err, pki.ErrNotWebServer) {
		t.Errorf("VerifyWebServer(the proxy's identity) = %v; want ErrNotWebServer", err)
	}
}
