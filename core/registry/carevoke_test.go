package registry_test

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/fleetprov/prov/core/registry"
	"github.com/fleetprov/prov/core/registry/registrytest"
	"github.com/fleetprov/prov/core/store"
	"github.com/fleetprov/prov/internal/testenv"
	"github.com/fleetprov/prov/pki"
	"github.com/fleetprov/prov/pki/stepca"
)

var adminID = pki.Identity{TrustDomain: registrytest.TrustDomain, Role: pki.RoleAdmin, Name: "alice"}

// flakyCA wraps the recording CA with the ways step-ca fails: not there
// at all (a connection that fails), a refusal, a certificate it already
// holds as revoked.
type flakyCA struct {
	ca      *registrytest.Revocations
	mu      sync.Mutex
	down    int // the next calls find no CA
	refuse  int // then the next calls are refused
	already map[string]bool
}

func (c *flakyCA) Revoke(ctx context.Context, serial, reason string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case c.down > 0:
		c.down--
		return errors.New("dial tcp 127.0.0.1:9000: connect: connection refused")
	case c.refuse > 0:
		c.refuse--
		return &stepca.Error{Status: 500, Message: "The certificate authority encountered an Internal Server Error."}
	case c.already[serial]:
		return fmt.Errorf("step-ca revoke %s: %w", serial, stepca.ErrAlreadyRevoked)
	}
	return c.ca.Revoke(ctx, serial, reason)
}

func (c *flakyCA) set(down, refuse int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.down, c.refuse = down, refuse
}

// sessions records what the broker is told to close.
type sessions struct {
	mu     sync.Mutex
	closed []string
}

func (s *sessions) CloseDevice(serial string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = append(s.closed, serial)
}

func pending(t *testing.T, reg *registry.Registry, serial string) []store.CARevocation {
	t.Helper()
	p, err := reg.PendingCARevocations(serial)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// runWorker runs the queue's worker until the test ends.
func runWorker(t *testing.T, reg *registry.Registry) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- reg.RunCARevocations(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
}

func drained(t *testing.T, reg *registry.Registry, serial string) {
	t.Helper()
	if err := testenv.WaitFor(10*time.Second, func() error {
		if p := pending(t, reg, serial); len(p) > 0 {
			return fmt.Errorf("%d certificates not yet revoked at the CA: %+v", len(p), p)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// Finding 1 at the registry: a device enrolled and revoked before it ever
// called core has its enrollment certificate revoked at the CA (core had
// seen nothing), with every other certificate known; its broker sessions
// are closed.
func TestRevokeReachesEveryCertificateAtTheCA(t *testing.T) {
	f := registrytest.New(t, store.Options{})
	closed := &sessions{}
	reg := registry.New(f.Store, f.Policy, f.Bundles, f.Changes, registry.Options{Revoker: f.Revoked, Sessions: closed})
	v := register(t, reg, "10000000000000a1")
	first := f.Chain(t, pki.RoleDevice, v.Serial)[0]
	second := f.Chain(t, pki.RoleDevice, v.Serial)[0] // re-enrolled (policy allow), seen since
	issued(t, reg, v.Serial, first)
	v = issued(t, reg, v.Serial, second)
	if err := reg.Admit(v, second, registry.ViaAPI); err != nil {
		t.Fatal(err)
	}
	if _, err := reg.Revoke(context.Background(), v.Serial, "stolen", adminID); err != nil {
		t.Fatal(err)
	}
	want := []string{first.SerialNumber.String(), second.SerialNumber.String()}
	if got := f.Revoked.List(); !slices.Equal(slices.Sorted(slices.Values(got)), slices.Sorted(slices.Values(want))) {
		t.Fatalf("revoked at the CA %v, want %v (the enrollment certificate, never seen, included)", got, want)
	}
	if p := pending(t, reg, v.Serial); len(p) != 0 {
		t.Fatalf("still pending after the CA confirmed: %+v", p)
	}
	if ev := events(t, reg, v.Serial, "revoked at the CA"); len(ev) != 2 || ev[0].Detail["outcome"] != "revoked" {
		t.Fatalf("audit of the CA's part: %+v", ev)
	}
	if !slices.Equal(closed.closed, []string{v.Serial}) {
		t.Fatalf("broker told to close %v", closed.closed)
	}

	// A certificate core did not know (renewed at the CA while core could
	// not reach it, say), presented after the revoke: refused, and revoked
	// at the CA too.
	runWorker(t, reg)
	renewed := f.Chain(t, pki.RoleDevice, v.Serial)[0]
	v, _ = reg.Device(v.Serial)
	if err := reg.Admit(v, renewed, registry.ViaMQTT); !errors.Is(err, store.ErrRevoked) {
		t.Fatalf("a revoked device's unknown certificate: %v", err)
	}
	if err := testenv.WaitFor(10*time.Second, func() error {
		if !slices.Contains(f.Revoked.List(), renewed.SerialNumber.String()) {
			return fmt.Errorf("revoked at the CA: %v", f.Revoked.List())
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// A revoke while the CA is down is acknowledged, shows what is pending, and
// is retried until the CA confirms: through refusals, and a certificate
// the CA already holds as revoked (done too).
func TestCARevocationsRetriedUntilConfirmed(t *testing.T) {
	f := registrytest.New(t, store.Options{})
	ca := &flakyCA{ca: f.Revoked, down: 1_000_000}
	metrics := prometheus.NewRegistry()
	reg := registry.New(f.Store, f.Policy, f.Bundles, f.Changes, registry.Options{Revoker: ca, CARetry: 10 * time.Millisecond, Metrics: metrics})
	v := register(t, reg, "10000000000000a1")
	a, b := f.Chain(t, pki.RoleDevice, v.Serial)[0], f.Chain(t, pki.RoleDevice, v.Serial)[0]
	issued(t, reg, v.Serial, a)
	issued(t, reg, v.Serial, b)
	ca.already = map[string]bool{b.SerialNumber.String(): true} // revoked at the CA directly, say

	got, err := reg.Revoke(context.Background(), v.Serial, "stolen", adminID)
	if err != nil || got.Status != store.Revoked {
		t.Fatalf("revoke with the CA down: %+v %v", got, err)
	}
	p := pending(t, reg, v.Serial)
	if len(p) != 2 || p[0].Attempts != 1 || p[0].LastError == "" || !p[0].NextAttempt.After(p[0].Since) {
		t.Fatalf("pending after the first attempt: %+v", p)
	}
	runWorker(t, reg)
	// Down a while longer: the worker keeps trying, nothing is lost.
	if err := testenv.WaitFor(10*time.Second, func() error {
		if n := counter(t, metrics, "prov_core_ca_revocations_total", "result", "failed"); n < 4 {
			return fmt.Errorf("%v failed attempts", n)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if n := counter(t, metrics, "prov_core_ca_revocations_pending", "", ""); n != 2 {
		t.Errorf("pending gauge %v, want 2", n)
	}
	ca.set(0, 2) // back, refusing twice
	drained(t, reg, v.Serial)
	ev := events(t, reg, v.Serial, "revoked at the CA")
	outcomes := map[string]string{}
	for _, e := range ev {
		outcomes[e.Detail["serial"]] = e.Detail["outcome"]
	}
	if len(ev) != 2 || outcomes[a.SerialNumber.String()] != "revoked" || outcomes[b.SerialNumber.String()] != "already revoked" {
		t.Fatalf("audit of the CA's part: %+v", ev)
	}
	if got := f.Revoked.List(); !slices.Equal(got, []string{a.SerialNumber.String()}) {
		t.Fatalf("revoked at the CA: %v", got)
	}
	if n := counter(t, metrics, "prov_core_ca_revocations_pending", "", ""); n != 0 {
		t.Errorf("pending gauge %v after draining", n)
	}
}

// A revoke acknowledged while the CA is down survives core stopping: the
// next core finds the queue in the store and finishes it.
func TestCARevocationSurvivesARestart(t *testing.T) {
	f := registrytest.New(t, store.Options{})
	path := filepath.Join(t.TempDir(), "registry.db")
	st := openStore(t, f, path)
	down := &flakyCA{ca: f.Revoked, down: 1_000_000}
	reg := registry.New(st, f.Policy, f.Bundles, nil, registry.Options{Revoker: down, CARetry: 10 * time.Millisecond})
	v := register(t, reg, "10000000000000a1")
	leaf := f.Chain(t, pki.RoleDevice, v.Serial)[0]
	issued(t, reg, v.Serial, leaf)
	if _, err := reg.Revoke(context.Background(), v.Serial, "stolen", adminID); err != nil {
		t.Fatal(err)
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}

	st = openStore(t, f, path)
	t.Cleanup(func() { _ = st.Close() })
	reg = registry.New(st, f.Policy, f.Bundles, nil, registry.Options{Revoker: f.Revoked, CARetry: 10 * time.Millisecond})
	if p := pending(t, reg, v.Serial); len(p) != 1 || p[0].Serial != leaf.SerialNumber.String() {
		t.Fatalf("after the restart, pending %+v", p)
	}
	runWorker(t, reg)
	drained(t, reg, v.Serial)
	if got := f.Revoked.List(); !slices.Equal(got, []string{leaf.SerialNumber.String()}) {
		t.Fatalf("revoked at the CA: %v", got)
	}
}
