package registry

import (
	"context"
	"errors"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/fleetprov/prov/core/store"
	"github.com/fleetprov/prov/pki/stepca"
)

// Revocation at the CA: Revoke queues every certificate of the device in
// the store with its status and tries the CA at once; RunCARevocations
// works what is left until the CA confirms each one. The CA's answers are
// idempotent (one already revoked is done), so two attempts at the same
// certificate, or a retry after core stopped between the CA's answer and
// the store's write, do no harm.

const (
	// firstAttemptTimeout bounds the CA's part of an admin's revoke
	// request; what it does not finish stays queued.
	firstAttemptTimeout = 5 * time.Second
	// attemptTimeout bounds one attempt by the worker.
	attemptTimeout = 10 * time.Second
	// DefaultCARetry is the first pause after a failed attempt (Options.
	// CARetry): of the certificate, doubling up to retryMax, and of the
	// whole queue while the CA does not answer at all, doubling up to
	// unreachableMax. Once the CA answers again, the queue is worked within
	// retryMax.
	DefaultCARetry = 2 * time.Second
	retryMax       = 2 * time.Minute
	unreachableMax = time.Minute
	// storeRetry is the pause after the queue could not be read.
	storeRetry = 10 * time.Second
	// idleRecheck: an empty queue is read again this often. Whatever
	// queues wakes the worker; this catches an entry whose writer saw the
	// device active just before a revoke and so did not.
	idleRecheck = time.Minute
)

// caQueue is the worker's state and metrics.
type caQueue struct {
	kick    chan struct{}
	pending prometheus.Gauge
	results *prometheus.CounterVec
}

func newCAQueue() *caQueue {
	return &caQueue{
		kick: make(chan struct{}, 1),
		pending: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "prov_core_ca_revocations_pending",
			Help: "Certificates of revoked devices the CA has not confirmed as revoked yet.",
		}),
		results: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "prov_core_ca_revocations_total",
			Help: "Attempts to revoke a revoked device's certificate at the CA, by result (revoked, already_revoked, failed).",
		}, []string{"result"}),
	}
}

func (q *caQueue) collectors() []prometheus.Collector {
	return []prometheus.Collector{q.pending, q.results}
}

// wake has the worker look at the queue now.
func (q *caQueue) wake() {
	select {
	case q.kick <- struct{}{}:
	default:
	}
}

// PendingCARevocations are a device's certificates the CA has not
// confirmed as revoked yet.
func (r *Registry) PendingCARevocations(serial string) ([]store.CARevocation, error) {
	return r.store.PendingCARevocations(serial)
}

// revokeAtCANow is the CA's part of an admin's revoke: one attempt at each
// of the device's queued certificates within firstAttemptTimeout.
func (r *Registry) revokeAtCANow(ctx context.Context, serial string) {
	if r.o.Revoker == nil {
		r.log.Warn("no revoker at the CA configured (ca.revokerKey): the device's certificates stay queued, valid at the CA until they expire",
			"serial", serial)
		return
	}
	defer r.ca.wake()
	pending, err := r.store.PendingCARevocations(serial)
	if err != nil {
		r.log.Error("cannot read the device's CA revocations; the worker will", "serial", serial, "err", err)
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), firstAttemptTimeout)
	defer cancel()
	for _, e := range pending {
		if !r.revokeAtCA(ctx, e) {
			return
		}
	}
}

// RunCARevocations works the queue of revocations at the CA until ctx
// ends: each due certificate is tried; a failure backs that one off
// (CARetry doubling to retryMax) and, if the CA did not answer at all,
// pauses the queue (CARetry doubling to unreachableMax). With no revoker
// configured it has nothing to do.
func (r *Registry) RunCARevocations(ctx context.Context) error {
	if r.o.Revoker == nil {
		return nil
	}
	timer := time.NewTimer(0)
	defer timer.Stop()
	unreachable := time.Duration(0)
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-timer.C:
		case <-r.ca.kick:
		}
		wait := r.caRound(ctx, &unreachable)
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
		timer.Reset(wait)
	}
}

// caRound tries every due certificate once and returns how long to wait
// for the next round.
func (r *Registry) caRound(ctx context.Context, unreachable *time.Duration) time.Duration {
	q, err := r.store.CARevocations(time.Now())
	if err != nil {
		r.log.Error("cannot read the queue of CA revocations", "err", err)
		return storeRetry
	}
	for _, e := range q.Due {
		actx, cancel := context.WithTimeout(ctx, attemptTimeout)
		answered := r.revokeAtCA(actx, e)
		cancel()
		if ctx.Err() != nil {
			return 0
		}
		if !answered {
			*unreachable = min(max(2**unreachable, r.o.CARetry), unreachableMax)
			r.ca.pending.Set(float64(q.Pending))
			return *unreachable
		}
	}
	*unreachable = 0
	if q, err = r.store.CARevocations(time.Now()); err != nil {
		r.log.Error("cannot read the queue of CA revocations", "err", err)
		return storeRetry
	}
	r.ca.pending.Set(float64(q.Pending))
	switch {
	case len(q.Due) > 0:
		return 0
	case q.Next.IsZero():
		return idleRecheck
	}
	return max(time.Until(q.Next), 0)
}

// revokeAtCA makes one attempt at a queued certificate and records its
// outcome. It reports whether the CA answered (a refusal is an answer; a
// connection that fails is not).
func (r *Registry) revokeAtCA(ctx context.Context, e store.CARevocation) bool {
	err := r.o.Revoker.Revoke(ctx, e.Serial, e.Reason)
	outcome, result := "revoked", "revoked"
	if errors.Is(err, stepca.ErrAlreadyRevoked) {
		outcome, result, err = "already revoked", "already_revoked", nil
	}
	if err == nil {
		r.ca.results.WithLabelValues(result).Inc()
		done, serr := r.store.CARevocationDone(e.Device, e.Serial, outcome)
		switch {
		case serr != nil:
			r.log.Error("the CA revoked a certificate but the store cannot say so; it will be tried again", "serial", e.Device,
				"cert_serial", e.Serial, "err", serr)
		case done:
			r.log.Info("certificate revoked at the CA", "serial", e.Device, "cert_serial", e.Serial, "outcome", outcome,
				"attempts", e.Attempts+1, "queued_for", time.Since(e.Since).Round(time.Millisecond))
		}
		return true
	}
	r.ca.results.WithLabelValues("failed").Inc()
	next := time.Now().Add(r.retryDelay(e.Attempts + 1))
	r.log.Warn("revocation at the CA failed; core still refuses the device and will try again", "serial", e.Device,
		"cert_serial", e.Serial, "attempts", e.Attempts+1, "next", next.UTC(), "err", err)
	if serr := r.store.CARevocationFailed(e.Device, e.Serial, err.Error(), next); serr != nil {
		r.log.Error("cannot record a failed CA revocation", "serial", e.Device, "cert_serial", e.Serial, "err", serr)
	}
	var refused *stepca.Error
	return errors.As(err, &refused)
}

// retryDelay is the pause before attempt n+1 of one certificate.
func (r *Registry) retryDelay(n int) time.Duration {
	d := r.o.CARetry
	for i := 1; i < n && d < retryMax; i++ {
		d *= 2
	}
	return min(d, retryMax)
}
