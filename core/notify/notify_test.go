package notify_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/fleetprov/prov/core/contract/coreapi"
	"github.com/fleetprov/prov/core/notify"
	"github.com/fleetprov/prov/core/registry/registrytest"
	"github.com/fleetprov/prov/core/store"
	"github.com/fleetprov/prov/internal/testenv"
	"github.com/fleetprov/prov/pki"
)

// broker records what is published, or refuses.
type broker struct {
	mu   sync.Mutex
	got  []coreapi.Notification
	fail error
}

func (b *broker) Notify(_ context.Context, n coreapi.Notification) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.fail != nil {
		return b.fail
	}
	b.got = append(b.got, n)
	return nil
}

func (b *broker) serials() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.serialsLocked()
}

// serialsLocked is serials for a caller that holds b.mu.
func (b *broker) serialsLocked() []string {
	var s []string
	for _, n := range b.got {
		s = append(s, n.Serial)
	}
	slices.Sort(s)
	return s
}

func register(t *testing.T, f *registrytest.Fixture, first, n int, group string) []string {
	t.Helper()
	proxy := registrytest.Identity(t, pki.RoleProxy, "line-1")
	var serials []string
	for i := first; i < first+n; i++ {
		v, _, err := f.Registry.Register(coreapi.RegisterRequest{Board: "rpi4", HardwareID: fmt.Sprintf("20000000%08x", i), Group: group}, proxy)
		if err != nil {
			t.Fatal(err)
		}
		serials = append(serials, v.Serial)
	}
	slices.Sort(serials)
	return serials
}

func TestDeviceAndGroupChanges(t *testing.T) {
	f := registrytest.New(t, store.Options{})
	members := register(t, f, 0, 20, "line-b")
	other := register(t, f, 100, 1, "default")
	b := &broker{}
	reg := prometheus.NewRegistry()
	w := notify.New(f.Store, f.Bundles, b, 0, slog.New(slog.DiscardHandler), reg)
	run(t, w)

	w.GroupChanged("line-b")
	if err := testenv.WaitFor(10*time.Second, func() error {
		if got := b.serials(); !slices.Equal(got, members) {
			return fmt.Errorf("published %d of %d members", len(got), len(members))
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	w.DeviceChanged(other[0])
	if err := testenv.WaitFor(10*time.Second, func() error {
		if got := sent(t, reg, "published"); got != float64(len(members)+1) {
			return fmt.Errorf("published counter %v", got)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	// Each notification names the generation whose bundle is built and
	// cached, so the device's fetch is a cache hit.
	b.mu.Lock()
	for _, n := range b.got {
		v, err := f.Store.Device(n.Serial)
		if err != nil || n.Generation != v.Generation() || len(n.SHA256) != 64 {
			t.Errorf("notification %+v for %+v (%v)", n, v, err)
		}
	}
	if f.Bundles.Stats().Builds != uint64(len(members)+1) {
		t.Errorf("%d bundles built, want %d", f.Bundles.Stats().Builds, len(members)+1)
	}
	if !slices.Contains(b.serialsLocked(), other[0]) {
		t.Errorf("the device change is not published")
	}

	b.fail = errors.New("broker away")
	b.mu.Unlock()
	w.DeviceChanged(other[0])
	if err := testenv.WaitFor(10*time.Second, func() error {
		if got := sent(t, reg, "failed"); got != 1 {
			return fmt.Errorf("failed counter %v", got)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// run runs w until the test ends.
func run(t *testing.T, w *notify.Worker) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
}

// A full queue drops the change and counts it; nothing blocks.
func TestQueueFull(t *testing.T) {
	f := registrytest.New(t, store.Options{})
	reg := prometheus.NewRegistry()
	w := notify.New(f.Store, f.Bundles, &broker{}, 2, slog.New(slog.DiscardHandler), reg)
	for range 5 {
		w.DeviceChanged("0000000000") // not running: the queue fills
	}
	if got := sent(t, reg, "dropped"); got != 3 {
		t.Errorf("dropped %v, want 3", got)
	}
}

// sent is the notifications counter of a result.
func sent(t *testing.T, reg *prometheus.Registry, result string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "prov_core_notifications_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "result" && l.GetValue() == result {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}
