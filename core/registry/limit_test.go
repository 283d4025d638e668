package registry

import (
	"testing"
	"time"
)

// One audit event per serial per interval; the next one reports the
// refusals held back; a serial quiet for an interval with nothing to
// report is forgotten, one with refusals to report is kept.
func TestAuditLimit(t *testing.T) {
	l := &auditLimit{every: time.Minute, last: map[string]*auditSlot{}}
	t0 := time.Unix(1_800_000_000, 0)
	steps := []struct {
		serial string
		at     time.Duration
		n      int
		ok     bool
	}{
		{"a", 0, 1, true},
		{"a", time.Second, 0, false},
		{"a", 30 * time.Second, 0, false},
		{"b", 30 * time.Second, 1, true},
		{"a", 61 * time.Second, 3, true}, // two held back, and this one
		{"a", 62 * time.Second, 0, false},
	}
	for i, s := range steps {
		if n, ok := l.allow(s.serial, t0.Add(s.at)); n != s.n || ok != s.ok {
			t.Fatalf("step %d (%s at %v): %d %v, want %d %v", i, s.serial, s.at, n, ok, s.n, s.ok)
		}
	}
	// Much later: b (nothing held back) is forgotten, a (one held back) kept.
	if n, ok := l.allow("c", t0.Add(10*time.Minute)); n != 1 || !ok {
		t.Fatalf("c: %d %v", n, ok)
	}
	if _, kept := l.last["a"]; !kept {
		t.Error("a serial with a refusal to report was forgotten")
	}
	if _, kept := l.last["b"]; kept {
		t.Error("a quiet serial was kept")
	}
	if n, ok := l.allow("a", t0.Add(11*time.Minute)); n != 2 || !ok {
		t.Fatalf("a, much later: %d %v, want the one held back and this one", n, ok)
	}
}
