package notify

import (
	"context"
	"fmt"
	"runtime"
	"sync"
	"time"

	"github.com/fleetprov/prov/core/store"
)

// pollEvery is how often the claimers look for jobs without being woken:
// for jobs whose retry time has come, and in case a wake-up was lost.
const pollEvery = 5 * time.Second

// claimLimit is how many device jobs one claim holds.
const claimLimit = 64

// maxAttempts is how often a job whose notification fails is tried
// before it is given up (the device still finds its generation by
// polling; the bundle is built either way).
const maxAttempts = 8

// RunOutbox acts on the jobs of a shared outbox (store.Outbox) until ctx
// ends: one claimer per CPU, woken by the engine's notifications and
// polling besides. Changes are not told to the worker in memory then:
// the engine wrote each change's job in the change's own transaction.
func (w *Worker) RunOutbox(ctx context.Context, box store.Outbox) error {
	wake, signal := w.wake, w.wakeUp
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := box.ListenJobs(ctx, signal, func(err error) { w.log.Warn("jobs: listener reconnecting; polling meanwhile", "err", err) }); err != nil {
			w.log.Error("jobs: listener stopped; polling only", "err", err)
		}
	})
	for range runtime.GOMAXPROCS(0) {
		wg.Go(func() { w.claimLoop(ctx, box, wake, signal) })
	}
	wg.Wait()
	return nil
}

// wakeUp wakes a claimer (which wakes another if it finds work).
func (w *Worker) wakeUp() {
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

// OutboxChanges is what the registry tells of changes when the engine
// writes their jobs (store.Outbox): the jobs are in the database already,
// so a change only wakes this core's claimers, at once.
func (w *Worker) OutboxChanges() interface {
	DeviceChanged(serial string)
	GroupChanged(group string)
} {
	return outboxChanges{w}
}

type outboxChanges struct{ w *Worker }

func (c outboxChanges) DeviceChanged(string) { c.w.wakeUp() }
func (c outboxChanges) GroupChanged(string)  { c.w.wakeUp() }

// claimLoop claims jobs while there are some, waking another claimer
// whenever it found work (there may be more), then waits.
func (w *Worker) claimLoop(ctx context.Context, box store.Outbox, wake <-chan struct{}, signal func()) {
	t := time.NewTicker(pollEvery)
	defer t.Stop()
	for ctx.Err() == nil {
		n, err := box.ClaimJobs(ctx, claimLimit, w.job)
		switch {
		case err != nil && ctx.Err() == nil:
			w.log.Warn("jobs: cannot claim; trying again", "err", err)
		case n > 0:
			signal()
			continue
		}
		select {
		case <-ctx.Done():
		case <-wake:
		case <-t.C:
		}
	}
}

// inFlight is how many of a job's notifications wait for the broker's
// acknowledgement at once: one at a time, a members job would spend most
// of its time waiting for round trips.
const inFlight = 32

// job builds and publishes each device of a claimed job, up to inFlight
// at once. A failed publication fails the job (the broker is likely away:
// what is not started yet is not), to be tried again, until maxAttempts.
func (w *Worker) job(ctx context.Context, j *store.Job) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	sem := make(chan struct{}, inFlight)
	var wg sync.WaitGroup
	for i := range j.Devices {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
		wg.Go(func() {
			defer func() { <-sem }()
			if err := w.publish(ctx, &j.Devices[i]); err != nil {
				cancel(err)
				return
			}
			w.outbox.WithLabelValues(j.Kind).Inc()
		})
	}
	wg.Wait()
	err := context.Cause(ctx)
	if err == nil {
		return nil
	}
	if j.Attempts+1 >= maxAttempts {
		w.log.Error("jobs: notification given up; the devices will find their generation by polling",
			"job", j.ID, "kind", j.Kind, "subject", j.Subject, "attempts", j.Attempts+1, "err", err)
		return nil
	}
	return fmt.Errorf("job %d: %w", j.ID, err)
}
