package status_test

import (
	"testing"

	"github.com/fleetprov/prov/proxy/auditlog"
	"github.com/fleetprov/prov/proxy/status"
)

// A subscriber that keeps up gets every record in order; one that does
// not read is dropped once its queue is full, and Observe never waits for
// it (this test would hang if it did).
func TestFeed(t *testing.T) {
	f := status.NewFeed()
	reader, stalled := f.Subscribe(), f.Subscribe()
	for i := range 2 * status.FeedQueue {
		seq := uint64(i + 1) //nolint:gosec // small
		f.Observe(auditlog.Record{Seq: seq})
		if r, ok := <-reader.C; !ok || r.Seq != seq {
			t.Fatalf("record %d: got %d (open %v)", seq, r.Seq, ok)
		}
		if i == status.FeedQueue {
			if n := f.Subscribers(); n != 1 {
				t.Fatalf("%d subscribers after the stalled one's queue filled, want 1", n)
			}
		}
	}
	n := 0
	for r := range stalled.C {
		n++
		if r.Seq != uint64(n) { //nolint:gosec // small
			t.Fatalf("the stalled subscriber's record %d is seq %d", n, r.Seq)
		}
	}
	if n != status.FeedQueue {
		t.Fatalf("the stalled subscriber got %d records before it was dropped, want %d", n, status.FeedQueue)
	}
	f.Unsubscribe(reader)
	f.Unsubscribe(reader) // twice is fine
	if _, ok := <-reader.C; ok || f.Subscribers() != 0 {
		t.Fatal("an unsubscribed reader's channel is open, or subscribers are left")
	}
}
