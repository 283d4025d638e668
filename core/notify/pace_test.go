package notify_test

import (
	"fmt"
	"log/slog"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/fleetprov/prov/core/bundlecache"
	"github.com/fleetprov/prov/core/imagebuild"
	"github.com/fleetprov/prov/core/notify"
	"github.com/fleetprov/prov/core/registry/registrytest"
	"github.com/fleetprov/prov/core/store"
	"github.com/fleetprov/prov/internal/testenv"
)

// rendezvous holds the first builds until want of them are in at once,
// and records the most that ever were.
type rendezvous struct {
	next   notify.Bundles
	want   int64
	in     atomic.Int64
	most   atomic.Int64
	open   chan struct{}
	opened sync.Once
}

func (r *rendezvous) Get(rec *imagebuild.Record) (*bundlecache.Bundle, error) {
	n := r.in.Add(1)
	defer r.in.Add(-1)
	for m := r.most.Load(); n > m && !r.most.CompareAndSwap(m, n); m = r.most.Load() {
	}
	if n >= r.want {
		r.opened.Do(func() { close(r.open) })
	}
	<-r.open
	return r.next.Get(rec)
}

// A group change builds with exactly the pace's builders at once: all of
// them (the first three wait until three are in), never more.
func TestPaceBoundsBuilders(t *testing.T) {
	f := registrytest.New(t, store.Options{})
	members := register(t, f, 0, 12, "line-b")
	r := &rendezvous{next: f.Bundles, want: 3, open: make(chan struct{})}
	b := &broker{}
	w := notify.New(f.Store, r, b, 0, slog.New(slog.DiscardHandler), prometheus.NewRegistry())
	w.SetPace(notify.Pace{Builders: 3})
	run(t, w)
	w.GroupChanged("line-b")
	if err := testenv.WaitFor(10*time.Second, func() error {
		if got := len(b.serials()); got != len(members) {
			return fmt.Errorf("published %d of %d members (%d builds in at most)", got, len(members), r.most.Load())
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if most := r.most.Load(); most != 3 {
		t.Errorf("%d builds at once, want 3", most)
	}
}

// The default leaves a CPU to the rest of core, and never goes below one.
func TestDefaultBuilders(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(0))
	for procs, want := range map[int]int{1: 1, 2: 1, 4: 3} {
		runtime.GOMAXPROCS(procs)
		if got := notify.DefaultBuilders(); got != want {
			t.Errorf("GOMAXPROCS %d: DefaultBuilders() = %d, want %d", procs, got, want)
		}
	}
}
