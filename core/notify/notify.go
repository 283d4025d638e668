// Package notify is core's change worker: after every change that gives
// devices a new generation, it builds each changed device's next bundle, so
// it is ready before the device asks, and publishes the device's
// notification. A group change fans out to every member, on every CPU but
// one by default.
//
// It never blocks a request: when its queue is full a change is dropped
// and counted, and devices find their new generation by polling. Its share
// of the CPU is bounded (Pace), so a large change leaves a CPU to serve
// requests.
package notify

import (
	"context"
	"fmt"
	"log/slog"
	"runtime"
	"sync"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"

	"github.com/fleetprov/prov/core/bundlecache"
	"github.com/fleetprov/prov/core/contract/coreapi"
	"github.com/fleetprov/prov/core/imagebuild"
	"github.com/fleetprov/prov/core/policy"
	"github.com/fleetprov/prov/core/store"
)

// Notifier publishes a device's new generation (the MQTT broker).
type Notifier interface {
	Notify(ctx context.Context, n coreapi.Notification) error
}

// Devices is what the worker reads of the registry (store.Store).
type Devices interface {
	Device(serial string) (*store.View, error)
	GroupMembers(group string, fn func(serial string) error) error
}

// Bundles builds and keeps signed bundles (*bundlecache.Cache).
type Bundles interface {
	Get(rec *imagebuild.Record) (*bundlecache.Bundle, error)
}

// job is a change to act on: one device, or every device of a group.
type job struct {
	serial string
	group  string
}

// Worker acts on changes.
type Worker struct {
	devices  Devices
	bundles  Bundles
	notifier Notifier
	jobs     chan job
	log      *slog.Logger
	results  *prometheus.CounterVec
	outbox   *prometheus.CounterVec
	wake     chan struct{} // the outbox's claimers (RunOutbox)
	builders int           // devices built and published at once
	slots    chan struct{} // of builders: taken for each build, whoever asks
	limit    *rate.Limiter // builds per second; nil: as fast as builders go
}

// Pace bounds the worker's share of the CPU. Building and signing a bundle
// is CPU work that never waits, and the Go scheduler has no priorities: a
// goroutine made ready by a request waits for a CPU until a builder gives
// one up, so with a builder on every CPU another device's fetch waited
// several scheduling rounds (p99 41 times its idle p99, BenchmarkReprovision
// on 2 cores). One CPU left to the rest of core (the default) keeps them
// far closer to idle, for a change rate a little lower on 2 cores (the
// second builder spent much of its CPU contending with the first).
type Pace struct {
	// Builders is how many bundles are built at once, by a group's fan-out
	// and the outbox's jobs together; 0 means DefaultBuilders.
	Builders int
	// BuildsPerSecond caps the rate of builds (a token bucket as deep as
	// Builders; waiting for a token sleeps); 0 means no cap.
	BuildsPerSecond float64
}

// DefaultBuilders is every CPU but one, and at least one.
func DefaultBuilders() int { return max(1, runtime.GOMAXPROCS(0)-1) }

// SetPace sets the pace; call it before Run or RunOutbox.
func (w *Worker) SetPace(p Pace) {
	w.builders = p.Builders
	if w.builders <= 0 {
		w.builders = DefaultBuilders()
	}
	w.slots = make(chan struct{}, w.builders)
	w.limit = nil
	if p.BuildsPerSecond > 0 {
		w.limit = rate.NewLimiter(rate.Limit(p.BuildsPerSecond), w.builders)
	}
}

// DefaultQueue is how many changes wait at most.
const DefaultQueue = 4096

// New makes a worker with a queue of queue changes (DefaultQueue if 0).
// notifier may be nil (bundles are still built ahead); metrics may be nil.
func New(devices Devices, bundles Bundles, notifier Notifier, queue int, log *slog.Logger, metrics prometheus.Registerer) *Worker {
	if queue == 0 {
		queue = DefaultQueue
	}
	w := &Worker{devices: devices, bundles: bundles, notifier: notifier, jobs: make(chan job, queue), wake: make(chan struct{}, 1), log: log.With("component", "notify"),
		results: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "prov_core_notifications_total", Help: "Update notifications by result (published, failed, dropped).",
		}, []string{"result"}),
		outbox: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "prov_core_outbox_devices_total", Help: "Devices acted on from jobs claimed from the shared outbox, by kind of job (device, members).",
		}, []string{"kind"})}
	if metrics != nil {
		metrics.MustRegister(w.results, w.outbox)
	}
	w.SetPace(Pace{})
	return w
}

// DeviceChanged queues a device.
func (w *Worker) DeviceChanged(serial string) { w.enqueue(job{serial: serial}) }

// GroupChanged queues every member of a group.
func (w *Worker) GroupChanged(group string) { w.enqueue(job{group: group}) }

func (w *Worker) enqueue(j job) {
	select {
	case w.jobs <- j:
	default:
		w.results.WithLabelValues("dropped").Inc()
		w.log.Warn("notification queue full; devices will find the change by polling", "serial", j.serial, "group", j.group)
	}
}

// Run acts on changes until ctx ends.
func (w *Worker) Run(ctx context.Context) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case j := <-w.jobs:
			if j.group != "" {
				w.group(ctx, j.group)
				continue
			}
			w.device(ctx, j.serial)
		}
	}
}

// group processes every member of a group with the pace's builders: the
// list is read first (a short read transaction, not one held for the
// whole run), then shared out.
func (w *Worker) group(ctx context.Context, group string) {
	var serials []string
	if err := w.devices.GroupMembers(group, func(serial string) error {
		serials = append(serials, serial)
		return nil
	}); err != nil {
		w.log.Error("cannot list group members", "group", group, "err", err)
		return
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	for range min(w.builders, len(serials)) {
		wg.Go(func() {
			for ctx.Err() == nil {
				i := int(next.Add(1)) - 1
				if i >= len(serials) {
					return
				}
				w.device(ctx, serials[i])
			}
		})
	}
	wg.Wait()
}

func (w *Worker) device(ctx context.Context, serial string) {
	v, err := w.devices.Device(serial)
	if err != nil {
		w.log.Error("notify: cannot read device", "serial", serial, "err", err)
		return
	}
	_ = w.publish(ctx, v) //nolint:errcheck // logged and counted; the device polls
}

// publish builds a device's bundle and publishes its notification; a
// failure is logged and counted, and returned for a job to try again.
func (w *Worker) publish(ctx context.Context, v *store.View) error {
	b, err := w.build(ctx, v)
	if err != nil {
		if ctx.Err() != nil {
			return err // stopping, not failing
		}
		w.log.Error("notify: cannot build bundle", "serial", v.Serial, "err", err)
		return err
	}
	if w.notifier == nil {
		return nil
	}
	if err := w.notifier.Notify(ctx, coreapi.Notification{Serial: v.Serial, Generation: b.Generation, SHA256: b.SHA256}); err != nil {
		w.results.WithLabelValues("failed").Inc()
		w.log.Warn("notify: publish failed; the device will find the change by polling", "serial", v.Serial, "err", err)
		return fmt.Errorf("notify %s: %w", v.Serial, err)
	}
	w.results.WithLabelValues("published").Inc()
	return nil
}

// build gets a device's bundle within the pace: a builder's slot, and a
// token if builds per second are capped (waiting for either sleeps; the
// publication after it holds neither).
func (w *Worker) build(ctx context.Context, v *store.View) (*bundlecache.Bundle, error) {
	select {
	case w.slots <- struct{}{}:
	case <-ctx.Done():
		return nil, context.Cause(ctx)
	}
	defer func() { <-w.slots }()
	if w.limit != nil {
		if err := w.limit.Wait(ctx); err != nil {
			return nil, fmt.Errorf("pace: %w", err)
		}
	}
	return w.bundles.Get(policy.Record(v)) //nolint:wrapcheck // bundlecache names the device and generation
}
