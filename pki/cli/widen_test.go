package cli_test

import (
	"bytes"
	"context"
	"crypto/x509"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/fleetprov/prov/pki"
	"github.com/fleetprov/prov/pki/ca/catest"
	"github.com/fleetprov/prov/pki/cli"
	"github.com/fleetprov/prov/pki/deployment"
	"github.com/fleetprov/prov/pki/stepca"
)

// The documented way to widen the name constraints: prov-pki widen
// re-issues the intermediate (same key) with more permitted hosts; once
// the CA restarts it issues certificates for them, and what the old
// intermediate signed still verifies and renews, with nothing but the root
// on the relying party's side.
func TestWidenPermitsNewHosts(t *testing.T) {
	c := catest.Start(t) // its own: it changes the intermediate
	pwFile := passwordFile(t, string(catest.Password))
	issueCore2 := func() (int, string, string) {
		return run(t, "issue", "--dir", c.Dir, "--password-file", pwFile, "--role", "core", "--name", "core2", "--host", "core2.fleet.test", "--host", "10.0.0.2")
	}
	if code, _, stderr := issueCore2(); code != cli.ExitError || !strings.Contains(stderr, `"core2.fleet.test" is not permitted`) {
		t.Fatalf("issue for a host init was not given: exit %d, want the CA's refusal:\n%s", code, stderr)
	}
	bundle, err := pki.LoadTrustBundle(c.RootCert())
	if err != nil {
		t.Fatal(err)
	}
	oldInter := readCertFile(t, c.IntermediateCert())

	code, stdout, stderr := run(t, "widen", "--dir", c.Dir, "--password-file", pwFile, "--host", "core2.fleet.test", "--host", "10.0.0.2", "--host", "localhost")
	if code != cli.ExitOK || !strings.Contains(stdout, "permit core2.fleet.test, 10.0.0.2.") || !strings.Contains(stdout, "restart the CA") {
		t.Fatalf("widen: exit %d\n%s%s", code, stdout, stderr)
	}
	inter := readCertFile(t, c.IntermediateCert())
	if !inter.PermittedDNSDomainsCritical || !slices.Equal(inter.PermittedDNSDomains, []string{"core2.fleet.test", "localhost"}) ||
		len(inter.PermittedIPRanges) != 2 || !slices.Equal(inter.PermittedURIDomains, []string{catest.TrustDomain}) {
		t.Errorf("widened constraints: critical %v DNS %q IP %v URI %q", inter.PermittedDNSDomainsCritical, inter.PermittedDNSDomains, inter.PermittedIPRanges, inter.PermittedURIDomains)
	}
	if !bytes.Equal(inter.RawSubjectPublicKeyInfo, oldInter.RawSubjectPublicKeyInfo) || !bytes.Equal(inter.RawSubject, oldInter.RawSubject) ||
		!bytes.Equal(inter.SubjectKeyId, oldInter.SubjectKeyId) || !inter.NotAfter.Equal(oldInter.NotAfter) {
		t.Error("the widened intermediate changed its key, subject, key identifier or end of validity")
	}
	if kept, _ := filepath.Glob(c.IntermediateCert() + ".replaced-*"); len(kept) != 1 || !readCertFile(t, kept[0]).Equal(oldInter) {
		t.Errorf("previous intermediate kept as %v", kept)
	}

	// What the old intermediate signed verifies with the new one.
	coreChain := readChain(t, c.IdentityCert(pki.RoleCore, deployment.DefaultCoreName))
	for what, chain := range map[string][]*x509.Certificate{"old chain": coreChain, "new intermediate": {coreChain[0], inter}} {
		if _, err := bundle.Verify(chain, pki.VerifyOptions{KeyUsage: x509.ExtKeyUsageServerAuth}); err != nil {
			t.Errorf("core's certificate with the %s: %v", what, err)
		}
	}

	c = c.Restart(t)
	if code, _, stderr := issueCore2(); code != cli.ExitOK {
		t.Fatalf("issue after widen and restart: exit %d\n%s", code, stderr)
	}
	chain := readChain(t, c.IdentityCert(pki.RoleCore, "core2"))
	if _, err := bundle.Verify(chain, pki.VerifyOptions{KeyUsage: x509.ExtKeyUsageServerAuth}); err != nil || !chain[1].Equal(inter) {
		t.Errorf("core2's chain with the widened intermediate: %v", err)
	}

	// A certificate from before renews through the restarted CA (mTLS,
	// as devices renew), and the renewed one verifies with the root alone.
	kp, err := pki.LoadKeyPair(c.IdentityCert(pki.RoleCore, deployment.DefaultCoreName), c.IdentityKey(pki.RoleCore, deployment.DefaultCoreName))
	if err != nil {
		t.Fatal(err)
	}
	renewer, err := stepca.New(c.CAURL, bundle, stepca.WithClientCertificate(kp))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	renewed, err := renewer.Renew(ctx)
	if err != nil {
		t.Fatalf("renew a certificate of the old intermediate: %v", err)
	}
	if _, err := bundle.Verify(renewed, pki.VerifyOptions{KeyUsage: x509.ExtKeyUsageServerAuth}); err != nil {
		t.Errorf("renewed certificate: %v", err)
	}

	// Widening to what is already permitted changes nothing.
	before := mustRead(t, c.IntermediateCert())
	code, stdout, stderr = run(t, "widen", "--dir", c.Dir, "--password-file", pwFile, "--host", "10.0.0.2")
	if code != cli.ExitOK || !strings.Contains(stdout, "nothing changed") || !bytes.Equal(before, mustRead(t, c.IntermediateCert())) {
		t.Errorf("widen to a permitted host: exit %d\n%s%s", code, stdout, stderr)
	}
}

func readChain(t *testing.T, path string) []*x509.Certificate {
	t.Helper()
	certs, err := pki.ParseCertificates(mustRead(t, path))
	if err != nil {
		t.Fatal(err)
	}
	return certs
}

func readCertFile(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	return readChain(t, path)[0]
}
