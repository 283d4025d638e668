package store_test

import (
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/fleetprov/prov/core/store"
)

func pendingSerials(t *testing.T, s store.Store, device string) []string {
	t.Helper()
	p, err := s.PendingCARevocations(device)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, r := range p {
		out = append(out, r.Serial)
	}
	return out
}

// Revoking queues every certificate known for the device, those a proxy
// recorded at enrollment as well as those core saw, in the transaction of
// the status: a failed commit leaves neither.
func TestRevokeQueuesEveryCertificate(t *testing.T) {
	forEngines(t, func(t *testing.T, e engine) {
		fail := ""
		s := e.open(t, store.Options{BeforeCommit: func(op string) error {
			if op == fail {
				return errors.New("disk full")
			}
			return nil
		}})
		v, _, err := s.Register(reg(t, "10000000abcdef12"))
		if err != nil {
			t.Fatal(err)
		}
		// Issued at enrollment, never seen (the device never called core).
		if _, err := s.RecordIssued(v.Serial, store.Issued{Serial: "100", KeySHA256: "k1"}); err != nil {
			t.Fatal(err)
		}
		// Issued and seen; and a renewal seen only.
		if _, err := s.RecordIssued(v.Serial, store.Issued{Serial: "200", KeySHA256: "k2"}); err != nil {
			t.Fatal(err)
		}
		for _, c := range []store.Certificate{{Fingerprint: "f200", Serial: "200"}, {Fingerprint: "f300", Serial: "300"}} {
			if err := s.SeenCertificate(v.Serial, c); err != nil {
				t.Fatal(err)
			}
		}

		fail = "revoke"
		if _, err := s.Revoke(v.Serial, "admin", "stolen"); !errors.Is(err, store.ErrUnavailable) {
			t.Fatalf("revoke on a failing disk: %v", err)
		}
		if got, _ := s.Device(v.Serial); got.Status != store.Active || len(pendingSerials(t, s, v.Serial)) != 0 {
			t.Fatalf("a failed revoke left status %s, queue %v", got.Status, pendingSerials(t, s, v.Serial))
		}
		fail = ""
		if _, err := s.Revoke(v.Serial, "admin", "stolen"); err != nil {
			t.Fatal(err)
		}
		if got := pendingSerials(t, s, v.Serial); !slices.Equal(got, []string{"100", "200", "300"}) {
			t.Fatalf("queued %v, want every certificate issued or seen", got)
		}

		now := time.Now()
		q, err := s.CARevocations(now)
		if err != nil || len(q.Due) != 3 || q.Pending != 3 || q.Due[0].Reason != "device revoked: stolen" || q.Due[0].Device != v.Serial {
			t.Fatalf("queue %+v %v", q, err)
		}
		next := now.Add(time.Hour).Truncate(time.Second)
		if err := s.CARevocationFailed(v.Serial, "100", "step-ca down", next); err != nil {
			t.Fatal(err)
		}
		q, _ = s.CARevocations(now)
		if len(q.Due) != 2 || q.Pending != 3 || !q.Next.Equal(next) {
			t.Fatalf("after a failure: %d due, %d pending, next %v", len(q.Due), q.Pending, q.Next)
		}
		if done, err := s.CARevocationDone(v.Serial, "200", "revoked"); !done || err != nil {
			t.Fatalf("done: %v %v", done, err)
		}
		if done, err := s.CARevocationDone(v.Serial, "200", "revoked"); done || err != nil {
			t.Fatalf("done twice: %v %v", done, err)
		}
		ev, _ := s.Audit("device/"+v.Serial, 0, 100)
		if last := ev[len(ev)-1]; last.Action != "revoked at the CA" || last.Detail["serial"] != "200" || last.Detail["attempts"] != "1" {
			t.Fatalf("audit of the completion: %+v", last)
		}

		// Revoking again changes no status but queues every certificate
		// again, due at once; what was still queued keeps its history.
		if _, err := s.Revoke(v.Serial, "admin", "again"); err != nil {
			t.Fatal(err)
		}
		p, _ := s.PendingCARevocations(v.Serial)
		if len(p) != 3 || p[0].Serial != "100" || p[0].Attempts != 1 || p[0].LastError != "step-ca down" || p[0].NextAttempt.After(time.Now()) ||
			p[1].Serial != "200" || p[1].Attempts != 0 || p[1].Reason != "device revoked: again" {
			t.Fatalf("after a second revoke: %+v", p)
		}
		if ev2, _ := s.Audit("device/"+v.Serial, 0, 100); len(ev2) != len(ev) {
			t.Errorf("a second revoke wrote %d audit events", len(ev2)-len(ev))
		}
	})
}

// A certificate that becomes known after the revoke (a proxy finishing an
// enrollment it started before, a request admitted just before) is
// recorded and queued for the CA too.
func TestCertificatesKnownAfterTheRevokeAreQueued(t *testing.T) {
	forEngines(t, func(t *testing.T, e engine) {
		s := e.open(t, store.Options{})
		v, _, err := s.Register(reg(t, "10000000abcdef12"))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.Revoke(v.Serial, "admin", "stolen"); err != nil {
			t.Fatal(err)
		}
		if _, err := s.RecordIssued(v.Serial, store.Issued{Serial: "400", KeySHA256: "k"}); !errors.Is(err, store.ErrRevoked) {
			t.Fatalf("recording a certificate of a revoked device: %v", err)
		}
		if err := s.SeenCertificate(v.Serial, store.Certificate{Fingerprint: "f500", Serial: "500"}); err != nil {
			t.Fatal(err)
		}
		if got := pendingSerials(t, s, v.Serial); !slices.Equal(got, []string{"400", "500"}) {
			t.Fatalf("queued %v", got)
		}
		d, _ := s.Device(v.Serial)
		if len(d.Issued) != 1 || len(d.Certificates) != 1 || d.Status != store.Revoked {
			t.Fatalf("record %+v", d.Device)
		}
	})
}
