package store_test

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fleetprov/prov/core/contract/coreapi"
	"github.com/fleetprov/prov/core/store"
)

var admitT0 = time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC)

// clock is a settable test clock.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

func admission(serial, key, batch string, quota int) store.AdmissionRequest {
	return store.AdmissionRequest{Serial: serial, KeySHA256: key, Batch: batch, Quota: quota, Policy: coreapi.ReenrollDeny,
		RetryWindow: 15 * time.Minute, Lease: time.Minute, Proxy: "spiffe://fleet.test/proxy/p1"}
}

// Twice as many proxies' attempts as there are places, each for its own
// board, race for a batch's quota: exactly the quota is admitted, every
// other attempt is refused with ErrQuota, and the places stay taken for
// good once enrolled (a restart of the store keeps them).
func TestAdmissionQuotaUnderRace(t *testing.T) {
	forEngines(t, func(t *testing.T, e engine) {
		s := e.open(t, store.Options{})
		const n = 40 // 2×n attempts for a quota of n/2
		var admitted atomic.Int32
		var wg sync.WaitGroup
		errs := make(chan error, 2*n)
		for i := range 2 * n {
			wg.Go(func() {
				serial := fmt.Sprintf("%010x", 0xa000+i)
				_, err := s.Admit(admission(serial, "k", "race", n/2))
				switch {
				case err == nil:
					admitted.Add(1)
					errs <- s.EndAdmission("race", serial, "k", true)
				case !errors.Is(err, store.ErrQuota):
					errs <- err
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Fatal(err)
			}
		}
		if got := admitted.Load(); got != n/2 {
			t.Fatalf("%d of %d attempts admitted for a quota of %d", got, 2*n, n/2)
		}
		s = e.restart(t, s)
		if _, err := s.Admit(admission("00000bffff", "k", "race", n/2)); !errors.Is(err, store.ErrQuota) {
			t.Fatalf("after a restart, one more: %v, want ErrQuota", err)
		}
	})
}

// One board sent to two proxies at once with two keys: one admission
// holds the serial, the other is refused with ErrAdmissionHeld, however
// the race falls, with or without a batch.
func TestAdmissionOfOneSerialWithTwoKeys(t *testing.T) {
	forEngines(t, func(t *testing.T, e engine) {
		s := e.open(t, store.Options{})
		for round, batch := range []string{"b1", ""} {
			serial := fmt.Sprintf("%010x", 0xb000+round)
			var wg sync.WaitGroup
			results := make([]error, 8)
			for i := range results {
				wg.Go(func() {
					_, results[i] = s.Admit(admission(serial, fmt.Sprintf("key-%d", i), batch, 100))
				})
			}
			wg.Wait()
			ok := 0
			for _, err := range results {
				switch {
				case err == nil:
					ok++
				case !errors.Is(err, store.ErrAdmissionHeld):
					t.Fatalf("batch %q: %v, want ErrAdmissionHeld", batch, err)
				}
			}
			if ok != 1 {
				t.Fatalf("batch %q: %d of %d keys admitted for one serial, want 1", batch, ok, len(results))
			}
		}
	})
}

// What one proxy did in its memory before admissions moved to core, now
// the store's: a retry of the same board (same key) shares its place; a
// failed enrollment gives the place back, a finished one keeps it; a board
// counted already may come back without a new place (its re-enrollment is
// its own rule); a place whose lease ran out (a proxy that died) is free.
func TestAdmissionPlaces(t *testing.T) {
	forEngines(t, func(t *testing.T, e engine) {
		c := &clock{now: admitT0}
		s := e.open(t, store.Options{Now: c.Now})
		a1, a2, a3 := "00000000a1", "00000000a2", "00000000a3"
		first, err := s.Admit(admission(a1, "k1", "b1", 2))
		if err != nil || first.Reservation.Holders != 1 || !first.Reservation.Expires.Equal(admitT0.Add(time.Minute)) {
			t.Fatalf("first: %+v %v", first, err)
		}
		again, err := s.Admit(admission(a1, "k1", "b1", 2))
		if err != nil || again.Reservation.Holders != 2 {
			t.Fatalf("the same board and key again: %+v %v", again, err)
		}
		if _, err := s.Admit(admission(a2, "k2", "b1", 2)); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Admit(admission(a3, "k3", "b1", 2)); !errors.Is(err, store.ErrQuota) {
			t.Fatalf("third of a quota of two while two are in flight: %v", err)
		} else if !strings.Contains(err.Error(), "batch b1 has used its quota of 2") {
			t.Fatalf("the refusal does not name the batch and quota: %v", err)
		}
		mustEnd := func(serial, key string, enrolled bool) {
			t.Helper()
			if err := s.EndAdmission("b1", serial, key, enrolled); err != nil {
				t.Fatal(err)
			}
		}
		mustEnd(a2, "k2", false) // failed: the place is given back
		mustEnd(a1, "k1", true)
		mustEnd(a1, "k1", true) // both attempts of a1 ended
		if _, err := s.Admit(admission(a3, "k3", "b1", 2)); err != nil {
			t.Fatalf("a place given back: %v", err)
		}
		mustEnd(a3, "k3", true)
		if _, err := s.Admit(admission(a2, "k2", "b1", 2)); !errors.Is(err, store.ErrQuota) {
			t.Fatalf("quota used: %v", err)
		}
		if _, err := s.Admit(admission(a1, "k1", "b1", 2)); err != nil {
			t.Fatalf("a board counted already: %v", err)
		}
		mustEnd(a1, "k1", false)

		// A proxy dies holding a place: the place is free once its lease
		// has run out, and the other key may then have the serial.
		if _, err := s.Admit(admission("00000000c1", "k1", "b2", 1)); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Admit(admission("00000000c2", "k2", "b2", 1)); !errors.Is(err, store.ErrQuota) {
			t.Fatalf("while the lease holds: %v", err)
		}
		if _, err := s.Admit(admission("00000000c1", "other", "b2", 1)); !errors.Is(err, store.ErrAdmissionHeld) {
			t.Fatalf("another key while the lease holds: %v", err)
		}
		c.Add(time.Minute)
		if _, err := s.Admit(admission("00000000c2", "k2", "b2", 1)); err != nil {
			t.Fatalf("after the lease: %v", err)
		}
		if _, err := s.Admit(admission("00000000c1", "other", "b2", 1)); !errors.Is(err, store.ErrQuota) {
			t.Fatalf("the dead proxy's serial after its lease, with c2 holding the only place: %v", err)
		}
		// The late outcome of the dead proxy's attempt ends nothing of
		// c2's reservation.
		if err := s.EndAdmission("b2", "00000000c1", "k1", false); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Admit(admission("00000000c2", "k3", "b2", 1)); !errors.Is(err, store.ErrAdmissionHeld) {
			t.Fatalf("c2 is still held: %v", err)
		}
	})
}

// The re-enrollment policy is decided against the certificates core
// recorded for the device, in the admission's transaction.
func TestAdmissionReenrollment(t *testing.T) {
	forEngines(t, func(t *testing.T, e engine) {
		c := &clock{now: admitT0}
		s := e.open(t, store.Options{Now: c.Now})
		v, _, err := s.Register(reg(t, "10000000abcdef12"))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.RecordIssued(v.Serial, store.Issued{Serial: "111", KeySHA256: "k1", NotBefore: admitT0.Add(-time.Minute), NotAfter: admitT0.Add(24 * time.Hour)}); err != nil {
			t.Fatal(err)
		}
		r := admission(v.Serial, "k2", "", 0)
		if _, err := s.Admit(r); !errors.Is(err, store.ErrReenrollment) {
			t.Fatalf("another key under deny: %v", err)
		}
		r.KeySHA256 = "k1"
		if _, err := s.Admit(r); err != nil {
			t.Fatalf("a retry of the same key within the window: %v", err)
		}
		if err := s.EndAdmission("", v.Serial, "k1", false); err != nil {
			t.Fatal(err)
		}
		r.KeySHA256, r.Policy = "k2", coreapi.ReenrollAllow
		got, err := s.Admit(r)
		if err != nil || !slices.Equal(got.Revoke, []string{"111"}) {
			t.Fatalf("another key under allow: %+v %v, want 111 to revoke", got, err)
		}
	})
}

// The policies, as the proxy applied them before (proxy/vouch), now the
// store's rule.
func TestDecideReenrollment(t *testing.T) {
	t0 := admitT0
	old := store.Issued{Serial: "111", KeySHA256: "k1", NotBefore: t0.Add(-time.Minute), NotAfter: t0.Add(24 * time.Hour)}
	expired := store.Issued{Serial: "100", KeySHA256: "k0", NotBefore: t0.Add(-48 * time.Hour), NotAfter: t0.Add(-24 * time.Hour)}
	stale := old
	stale.NotBefore = t0.Add(-2 * time.Hour)
	at := t0.Add(-time.Hour)
	replaced := stale
	replaced.Replaced = &at
	current := store.Issued{Serial: "333", KeySHA256: "k3", NotBefore: at, NotAfter: t0.Add(24 * time.Hour)}
	for _, tc := range []struct {
		policy coreapi.ReenrollmentPolicy
		issued []store.Issued
		key    string
		refuse bool
		revoke []string
	}{
		{coreapi.ReenrollDeny, nil, "k1", false, nil},
		{coreapi.ReenrollDeny, []store.Issued{old}, "k1", false, nil},  // a retry within the window
		{coreapi.ReenrollDeny, []store.Issued{stale}, "k1", true, nil}, // the same key, long after
		{coreapi.ReenrollDeny, []store.Issued{old}, "k2", true, nil},   // a reflashed card
		{coreapi.ReenrollSameKeyOnly, []store.Issued{stale}, "k1", false, nil},
		{coreapi.ReenrollSameKeyOnly, []store.Issued{old}, "k2", true, nil},
		{coreapi.ReenrollAllow, []store.Issued{old, expired}, "k2", false, []string{"111"}}, // expired ones need no revocation
		{coreapi.ReenrollAllow, []store.Issued{old}, "k1", false, nil},
		// A key a re-enrollment replaced is not the device's any more.
		{coreapi.ReenrollSameKeyOnly, []store.Issued{replaced, current}, "k1", true, nil},
		{coreapi.ReenrollSameKeyOnly, []store.Issued{replaced, current}, "k3", false, nil},
		{coreapi.ReenrollAllow, []store.Issued{replaced, current}, "k4", false, []string{"333"}},
	} {
		r := store.AdmissionRequest{Serial: "00000000d1", KeySHA256: tc.key, Policy: tc.policy, RetryWindow: 15 * time.Minute, Lease: time.Minute}
		got, err := store.DecideAdmission(r, store.AdmissionState{Issued: tc.issued}, t0)
		if (err != nil) != tc.refuse || (err != nil && !errors.Is(err, store.ErrReenrollment)) {
			t.Errorf("%s %v key %s: %v", tc.policy, tc.issued, tc.key, err)
		}
		if err == nil && !slices.Equal(got.Revoke, tc.revoke) {
			t.Errorf("%s: revokes %v, want %v", tc.policy, got.Revoke, tc.revoke)
		}
	}
}

// A certificate recorded for another key (a re-enrollment the policy
// allowed) replaces the keys before it: core accepts them no more, the
// new one it does, and the event names what it replaced. The same key
// again replaces nothing.
func TestAddIssuedReplacesOtherKeys(t *testing.T) {
	t0 := admitT0
	d := &store.Device{Serial: "00000000d2"}
	store.AddIssued(d, store.Issued{Serial: "1", KeySHA256: "k1", NotAfter: t0.Add(time.Hour)}, t0)
	store.AddIssued(d, store.Issued{Serial: "2", KeySHA256: "k1", NotAfter: t0.Add(2 * time.Hour)}, t0)
	if !d.KeyRecorded("k1") || d.Issued[0].Replaced != nil {
		t.Fatalf("the same key again replaced it: %+v", d.Issued)
	}
	ev := store.AddIssued(d, store.Issued{Serial: "3", KeySHA256: "k2", EKSHA256: strings.Repeat("e", 64), NotAfter: t0.Add(3 * time.Hour)}, t0.Add(time.Minute))
	if d.KeyRecorded("k1") || !d.KeyRecorded("k2") || d.KeyAttested("k2") == "" {
		t.Errorf("after a re-enrollment with k2: k1 recorded %v, k2 %v", d.KeyRecorded("k1"), d.KeyRecorded("k2"))
	}
	if ev == nil || ev.Detail["replaces"] != "1,2" || ev.Detail["ek"] == "" {
		t.Errorf("event %+v, want it to name the replaced certificates 1,2 and the EK", ev)
	}
	for _, c := range d.Issued[:2] {
		if c.Replaced == nil || !c.Replaced.Equal(t0.Add(time.Minute)) {
			t.Errorf("certificate %s: replaced %v", c.Serial, c.Replaced)
		}
	}
}
