// Package registrytest makes a real registry for tests that need no CA
// server: a test PKI (pki/pkitest) with an image signer under it, the store
// on bbolt in t.TempDir() (checked for consistency on cleanup), the data
// policy of two groups, and recorders of what the registry tells the change
// worker and the CA.
package registrytest

import (
	"context"
	"crypto/ed25519"
	"crypto/x509"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fleetprov/prov/core/bundlecache"
	"github.com/fleetprov/prov/core/contract/imagespec"
	"github.com/fleetprov/prov/core/policy"
	"github.com/fleetprov/prov/core/registry"
	"github.com/fleetprov/prov/core/store"
	"github.com/fleetprov/prov/pki"
	"github.com/fleetprov/prov/pki/pkitest"
	"github.com/fleetprov/prov/pki/signedimage"
)

// TrustDomain of the test deployment.
const TrustDomain = "fleet.test"

// Groups are the configured groups: "default" and "line-b".
var Groups = map[string]policy.GroupConfig{
	"default": {Hostname: "{{.Board}}-{{.Serial}}", MQTTClientID: "{{.Serial}}", MQTTGroupID: "fleet",
		Data: map[string]string{"/etc/prov/data/broker-url": "mqtts://broker.fleet.test:8883\n"}},
	"line-b": {Hostname: "b-{{.Serial}}", MQTTClientID: "b-{{.Serial}}", MQTTGroupID: "line-b"},
}

// Fixture is a registry with everything under it.
type Fixture struct {
	CA       *pkitest.CA
	Roots    *pki.TrustBundle
	Signer   *signedimage.Signer
	Store    *store.Bolt
	Policy   *policy.Policy
	Bundles  *bundlecache.Cache
	Registry *registry.Registry
	Changes  *Changes
	Revoked  *Revocations
}

// New makes a fixture; so are the store's options (fault injection).
func New(t testing.TB, so store.Options) *Fixture {
	t.Helper()
	ca := pkitest.NewCA(t, TrustDomain)
	roots, err := pki.ParseTrustBundle(ca.RootPEM)
	if err != nil {
		t.Fatal(err)
	}
	leaf, key := ca.Leaf(t, pkitest.LeafSpec{CN: "signer/images", URIs: []string{"spiffe://" + TrustDomain + "/signer/images"},
		EKU: []x509.ExtKeyUsage{x509.ExtKeyUsageCodeSigning}, Ed25519: true})
	signer, err := signedimage.NewSigner(key.(ed25519.PrivateKey), []*x509.Certificate{leaf, ca.Inter})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	secret := filepath.Join(dir, "machine-id.secret")
	if err := os.WriteFile(secret, []byte(strings.Repeat("s3cr3t-", 8)), 0o600); err != nil {
		t.Fatal(err)
	}
	rules := imagespec.DefaultRules()
	pol, err := policy.New(Groups, rules, secret)
	if err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(filepath.Join(dir, "registry.db"), so)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := st.Check(); err != nil {
			t.Errorf("store consistency: %v", err)
		}
		if err := st.Close(); err != nil {
			t.Error(err)
		}
	})
	for name, data := range pol.Groups() {
		if _, _, err := st.EnsureGroup(name, data, "config"); err != nil {
			t.Fatal(err)
		}
	}
	f := &Fixture{CA: ca, Roots: roots, Signer: signer, Store: st, Policy: pol, Bundles: bundlecache.New(signer, rules, 16<<20),
		Changes: &Changes{}, Revoked: &Revocations{}}
	f.Registry = registry.New(st, pol, f.Bundles, f.Changes, registry.Options{Revoker: f.Revoked})
	return f
}

// Chain is a verified chain (leaf, intermediate, root) of an identity, as
// a TLS server would see it.
func (f *Fixture) Chain(t testing.TB, role pki.Role, name string) []*x509.Certificate {
	t.Helper()
	id, err := pki.NewIdentity(TrustDomain, role, name)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := f.CA.Leaf(t, pkitest.LeafSpec{CN: id.CommonName(), URIs: []string{id.String()},
		EKU: []x509.ExtKeyUsage{role.ExtKeyUsage()}, NotAfter: time.Now().Add(time.Hour)})
	return []*x509.Certificate{leaf, f.CA.Inter, f.CA.Root}
}

// Identity is the identity of role and name in the test deployment.
func Identity(t testing.TB, role pki.Role, name string) pki.Identity {
	t.Helper()
	id, err := pki.NewIdentity(TrustDomain, role, name)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// Changes records what the registry tells the change worker.
type Changes struct {
	mu      sync.Mutex
	Devices []string
	Groups  []string
}

// DeviceChanged records a device.
func (c *Changes) DeviceChanged(serial string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.Devices = append(c.Devices, serial)
}

// GroupChanged records a group.
func (c *Changes) GroupChanged(group string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.Groups = append(c.Groups, group)
}

// Told returns the devices and groups told so far, and forgets them.
func (c *Changes) Told() (devices, groups []string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	devices, groups = c.Devices, c.Groups
	c.Devices, c.Groups = nil, nil
	return devices, groups
}

// Revocations records the certificate serials revoked at the "CA".
type Revocations struct {
	mu      sync.Mutex
	Serials []string
}

// Revoke records a revocation.
func (r *Revocations) Revoke(_ context.Context, certSerial, _ string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.Serials = append(r.Serials, certSerial)
	return nil
}

// List returns the serials revoked so far.
func (r *Revocations) List() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.Serials...)
}
