package registry_test

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	bolt "go.etcd.io/bbolt"

	"github.com/fleetprov/prov/core/contract/coreapi"
	"github.com/fleetprov/prov/core/contract/imagespec"
	"github.com/fleetprov/prov/core/policy"
	"github.com/fleetprov/prov/core/registry"
	"github.com/fleetprov/prov/core/registry/registrytest"
	"github.com/fleetprov/prov/core/store"
	"github.com/fleetprov/prov/pki"
)

var proxyID = pki.Identity{TrustDomain: registrytest.TrustDomain, Role: pki.RoleProxy, Name: "line-1"}

// register registers a device through reg, as a proxy does.
func register(t *testing.T, reg *registry.Registry, hw string) *store.View {
	t.Helper()
	v, _, err := reg.Register(coreapi.RegisterRequest{Board: "rpi4", HardwareID: hw}, proxyID)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// issued records leaf as issued for serial, as the proxy does at
// enrollment.
func issued(t *testing.T, reg *registry.Registry, serial string, leaf *x509.Certificate) *store.View {
	t.Helper()
	key, err := coreapi.KeySHA256(leaf.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	v, err := reg.RecordIssued(serial, coreapi.IssuedCertificate{Serial: leaf.SerialNumber.String(), KeySHA256: key,
		NotBefore: leaf.NotBefore, NotAfter: leaf.NotAfter}, proxyID)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// counter reads a counter (or gauge) of metrics with the given label.
func counter(t *testing.T, metrics *prometheus.Registry, name, label, value string) float64 {
	t.Helper()
	families, err := metrics.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			match := label == ""
			for _, l := range m.GetLabel() {
				match = match || (l.GetName() == label && l.GetValue() == value)
			}
			if !match {
				continue
			}
			if m.GetCounter() != nil {
				return m.GetCounter().GetValue()
			}
			return m.GetGauge().GetValue()
		}
	}
	return 0
}

func fingerprint(c *x509.Certificate) string {
	sum := sha256.Sum256(c.Raw)
	return hex.EncodeToString(sum[:])
}

func events(t *testing.T, reg *registry.Registry, serial, action string) []store.Event {
	t.Helper()
	all, err := reg.DeviceAudit(serial, 0)
	if err != nil {
		t.Fatal(err)
	}
	var out []store.Event
	for _, e := range all {
		if e.Action == action {
			out = append(out, e)
		}
	}
	return out
}

// Finding 3 at the registry: a certificate for a registered serial with a
// key core did not record (what a stolen proxy provisioner key mints) is
// refused, counted and audited as a possible key compromise, once per
// interval however often it is tried; the enrolled key is admitted.
func TestAdmitOnlyTheKeysRecorded(t *testing.T) {
	f := registrytest.New(t, store.Options{})
	metrics := prometheus.NewRegistry()
	reg := registry.New(f.Store, f.Policy, f.Bundles, f.Changes, registry.Options{Metrics: metrics})
	// Registered, nothing recorded yet: no key is accepted.
	unfinished := register(t, reg, "10000000000000a2")
	if err := reg.Admit(unfinished, f.Chain(t, pki.RoleDevice, unfinished.Serial)[0], registry.ViaAPI); !errors.Is(err, registry.ErrKeyNotEnrolled) {
		t.Fatalf("a device whose enrollment recorded no certificate: %v", err)
	}

	v := register(t, reg, "10000000000000a1")
	enrolled := f.Chain(t, pki.RoleDevice, v.Serial)[0]
	v = issued(t, reg, v.Serial, enrolled)
	if err := reg.Admit(v, enrolled, registry.ViaAPI); err != nil {
		t.Fatalf("the enrolled key: %v", err)
	}
	if got, _ := reg.Device(v.Serial); !got.HasCertificate(fingerprint(enrolled)) {
		t.Error("the admitted certificate is not remembered as seen")
	}
	rogue := f.Chain(t, pki.RoleDevice, v.Serial)[0] // same identity, the attacker's key
	for range 5 {
		err := reg.Admit(v, rogue, registry.ViaMQTT)
		if !errors.Is(err, registry.ErrKeyNotEnrolled) {
			t.Fatalf("a certificate with another key: %v", err)
		}
	}
	if n := counter(t, metrics, "prov_core_key_mismatch_total", "via", "mqtt"); n != 5 {
		t.Errorf("prov_core_key_mismatch_total{via=mqtt} = %v, want 5", n)
	}
	ev := events(t, reg, v.Serial, "key not enrolled: possible key compromise")
	if len(ev) != 1 || ev[0].Detail["serial"] != rogue.SerialNumber.String() || ev[0].Detail["via"] != "mqtt" ||
		ev[0].Actor != "spiffe://fleet.test/device/"+v.Serial {
		t.Fatalf("audit of the refused key (once per interval): %+v", ev)
	}
	if got, _ := reg.Device(v.Serial); got.HasCertificate(fingerprint(rogue)) {
		t.Error("a refused certificate is remembered as seen")
	}
	// Through the broker's door too, by serial.
	if err := reg.AdmitDevice(v.Serial, rogue); !errors.Is(err, registry.ErrKeyNotEnrolled) {
		t.Errorf("AdmitDevice with another key: %v", err)
	}
	if err := reg.AdmitDevice("0123456789", enrolled); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("AdmitDevice of an unknown serial: %v", err)
	}
}

// A device registered before core pinned keys has the key of the first
// certificate it is seen with pinned (audited); another key is refused
// from then on.
func TestLegacyDeviceKeyPinnedOnFirstUse(t *testing.T) {
	f := registrytest.New(t, store.Options{})
	path := filepath.Join(t.TempDir(), "legacy.db")
	st := openStore(t, f, path)
	v := register(t, registry.New(st, f.Policy, f.Bundles, nil, registry.Options{}), "10000000000000a1")
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	legacyRecord(t, path, v.Device)
	st = openStore(t, f, path)
	t.Cleanup(func() { _ = st.Close() })
	metrics := prometheus.NewRegistry()
	reg := registry.New(st, f.Policy, f.Bundles, nil, registry.Options{Metrics: metrics})

	first := f.Chain(t, pki.RoleDevice, v.Serial)[0]
	if err := reg.AdmitDevice(v.Serial, first); err != nil {
		t.Fatalf("a legacy device's first certificate: %v", err)
	}
	if err := reg.AdmitDevice(v.Serial, first); err != nil {
		t.Fatalf("its pinned key again: %v", err)
	}
	if err := reg.AdmitDevice(v.Serial, f.Chain(t, pki.RoleDevice, v.Serial)[0]); !errors.Is(err, registry.ErrKeyNotEnrolled) {
		t.Fatalf("another key after the pin: %v", err)
	}
	if ev := events(t, reg, v.Serial, "key pinned on first use"); len(ev) != 1 {
		t.Fatalf("audit of the pin: %+v", ev)
	}
	if n := counter(t, metrics, "prov_core_keys_pinned_on_first_use_total", "", ""); n != 1 {
		t.Errorf("pinned on first use: %v", n)
	}
}

// openStore opens the store at path (a core's that stops and starts) with
// the fixture's groups.
func openStore(t *testing.T, f *registrytest.Fixture, path string) *store.Bolt {
	t.Helper()
	st, err := store.Open(path, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	for name, data := range f.Policy.Groups() {
		if _, _, err := st.EnsureGroup(name, data, "config"); err != nil {
			t.Fatal(err)
		}
	}
	return st
}

// legacyRecord rewrites a closed store's device record as a core from
// before key pinning wrote it: plain JSON (what stores before compression
// held, still read), without keysPinned.
func legacyRecord(t *testing.T, path string, d store.Device) {
	t.Helper()
	d.KeysPinned = false
	raw, err := json.Marshal(&d)
	if err != nil {
		t.Fatal(err)
	}
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(func(tx *bolt.Tx) error { return tx.Bucket([]byte("devices")).Put([]byte(d.Serial), raw) }); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
}

// A group that requires a TPM-resident key (policy requireTPM) admits a
// device only with a key the proxy attested at enrollment (recorded with
// its endorsement key); a software key of that group is refused, counted
// and told apart from a key core never recorded. Another group takes
// either. A malformed endorsement key hash is refused as bad input.
func TestAdmitRequiresAttestedKeys(t *testing.T) {
	f := registrytest.New(t, store.Options{})
	groups := maps.Clone(registrytest.Groups)
	groups["tpm-only"] = policy.GroupConfig{Hostname: "t-{{.Serial}}", MQTTClientID: "t-{{.Serial}}", MQTTGroupID: "tpm", RequireTPM: true}
	secret := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(secret, []byte(strings.Repeat("s3cr3t-", 8)), 0o600); err != nil {
		t.Fatal(err)
	}
	pol, err := policy.New(groups, imagespec.DefaultRules(), secret)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := f.Store.EnsureGroup("tpm-only", nil, "config"); err != nil {
		t.Fatal(err)
	}
	metrics := prometheus.NewRegistry()
	reg := registry.New(f.Store, pol, f.Bundles, f.Changes, registry.Options{Metrics: metrics})
	ek := strings.Repeat("ab", 32)
	record := func(hw, group, ekHash string) (*store.View, *x509.Certificate, error) {
		t.Helper()
		v, _, err := reg.Register(coreapi.RegisterRequest{Board: "rpi4", HardwareID: hw, Group: group}, proxyID)
		if err != nil {
			t.Fatal(err)
		}
		leaf := f.Chain(t, pki.RoleDevice, v.Serial)[0]
		key, err := coreapi.KeySHA256(leaf.PublicKey)
		if err != nil {
			t.Fatal(err)
		}
		v, err = reg.RecordIssued(v.Serial, coreapi.IssuedCertificate{Serial: leaf.SerialNumber.String(), KeySHA256: key,
			NotBefore: leaf.NotBefore, NotAfter: leaf.NotAfter, EKSHA256: ekHash}, proxyID)
		return v, leaf, err
	}
	v, leaf, err := record("10000000000000b1", "tpm-only", ek)
	if err != nil {
		t.Fatal(err)
	}
	if err := reg.Admit(v, leaf, registry.ViaAPI); err != nil {
		t.Errorf("an attested key in a group that requires one: %v", err)
	}
	if got, _ := reg.Device(v.Serial); got.KeyAttested(mustKey(t, leaf)) != ek {
		t.Errorf("the record does not keep the endorsement key")
	}
	v, leaf, err = record("10000000000000b2", "tpm-only", "")
	if err != nil {
		t.Fatal(err)
	}
	if err := reg.Admit(v, leaf, registry.ViaMQTT); !errors.Is(err, registry.ErrNotAttested) {
		t.Errorf("a software key in a group that requires a TPM key: %v", err)
	}
	if n := counter(t, metrics, "prov_core_keys_not_attested_total", "", ""); n != 1 {
		t.Errorf("prov_core_keys_not_attested_total = %v, want 1", n)
	}
	v, leaf, err = record("10000000000000b3", "default", "")
	if err != nil {
		t.Fatal(err)
	}
	if err := reg.Admit(v, leaf, registry.ViaAPI); err != nil {
		t.Errorf("a software key in a group that takes one: %v", err)
	}
	for _, bad := range []string{"abc", strings.Repeat("AB", 32), strings.Repeat("zz", 32)} {
		var in *registry.BadInput
		if _, _, err := record("10000000000000b4", "default", bad); !errors.As(err, &in) || in.Field != "ekSha256" {
			t.Errorf("endorsement key %q: %v, want bad input naming ekSha256", bad, err)
		}
	}
}

func mustKey(t *testing.T, leaf *x509.Certificate) string {
	t.Helper()
	key, err := coreapi.KeySHA256(leaf.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	return key
}
