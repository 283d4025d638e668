package catest

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/fleetprov/prov/pki"
	"github.com/fleetprov/prov/pki/deployment"
	"github.com/fleetprov/prov/pki/stepca"
)

// ShortServiceCerts lets d's admin provisioner issue service certificates
// as short as min (prov-pki init's floor is an hour): tests of services
// that renew themselves need several renewals in a minute or two. Call it
// before the CA runs. Only the provisioner's minimum changes; renewal,
// backdate (a minute) and templates stay as init wrote them.
func ShortServiceCerts(t testing.TB, d *deployment.Deployment, minimum time.Duration) {
	t.Helper()
	if err := shortServiceCerts(d, minimum); err != nil {
		t.Fatal(err)
	}
}

func shortServiceCerts(d *deployment.Deployment, minimum time.Duration) error {
	raw, err := os.ReadFile(d.CAConfig())
	if err != nil {
		return fmt.Errorf("test PKI: %w", err)
	}
	var cfg map[string]any
	if err := json.Unmarshal(raw, &cfg); err != nil {
		return fmt.Errorf("test PKI: %s: %w", d.CAConfig(), err)
	}
	authority, _ := cfg["authority"].(map[string]any)
	provs, _ := authority["provisioners"].([]any)
	found := false
	for _, p := range provs {
		prov, _ := p.(map[string]any)
		if prov["name"] != stepca.AdminProvisionerName {
			continue
		}
		claims, _ := prov["claims"].(map[string]any)
		if claims == nil {
			return fmt.Errorf("test PKI: the admin provisioner has no claims in %s", d.CAConfig())
		}
		claims["minTLSCertDuration"] = minimum.String()
		found = true
	}
	if !found {
		return fmt.Errorf("test PKI: no provisioner %q in %s", stepca.AdminProvisionerName, d.CAConfig())
	}
	out, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return fmt.Errorf("test PKI: %w", err)
	}
	if err := os.WriteFile(d.CAConfig(), append(out, '\n'), 0o600); err != nil {
		return fmt.Errorf("test PKI: %w", err)
	}
	return nil
}

// Reissue issues the service identity role/name again through the running
// CA, with a new key, for lifetime, over its own directory (as prov-pki
// issue --force does, the old one kept aside), naming the same hosts as
// the certificate it replaces.
func (c *CA) Reissue(t testing.TB, role pki.Role, name string, lifetime time.Duration) *deployment.Issued {
	t.Helper()
	var hosts []string
	if data, err := os.ReadFile(c.IdentityCert(role, name)); err == nil {
		certs, err := pki.ParseCertificates(data)
		if err != nil {
			t.Fatal(err)
		}
		hosts = append(hosts, certs[0].DNSNames...)
		for _, ip := range certs[0].IPAddresses {
			hosts = append(hosts, ip.String())
		}
	}
	admin, err := c.AdminProvisioner(Password)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := c.IssueIdentity(ctx, lifetimeSigner{c.Client, lifetime}, admin,
		deployment.IdentityRequest{Role: role, Name: name, Hosts: hosts, Replace: true}, time.Now())
	if err != nil {
		t.Fatalf("reissue %s/%s for %s: %v", role, name, lifetime, err)
	}
	return out
}

// ReissueConsole issues the console certificate of proxy again through
// the running CA for lifetime, naming deployment.DefaultHosts (the hosts
// of the test PKI's proxies).
func (c *CA) ReissueConsole(t testing.TB, proxy string, lifetime time.Duration) *deployment.Issued {
	t.Helper()
	admin, err := c.AdminProvisioner(Password)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := c.IssueConsole(ctx, lifetimeSigner{c.Client, lifetime}, admin,
		deployment.ConsoleRequest{Proxy: proxy, Hosts: deployment.DefaultHosts, Replace: true}, time.Now())
	if err != nil {
		t.Fatalf("reissue the console certificate of %s for %s: %v", proxy, lifetime, err)
	}
	return out
}

// lifetimeSigner signs through the CA's client for a set lifetime.
type lifetimeSigner struct {
	c        *stepca.Client
	lifetime time.Duration
}

func (s lifetimeSigner) Sign(ctx context.Context, csr *x509.CertificateRequest, ott string) ([]*x509.Certificate, error) {
	return s.c.SignFor(ctx, csr, ott, s.lifetime)
}

func (s lifetimeSigner) SignAudience() string { return s.c.SignAudience() }
