package registry

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/fleetprov/prov/core/store"
	"github.com/fleetprov/prov/pki"
)

// PruneAudit prunes the audit trail to before, for an admin: the store
// keeps each subject's newest event of each action before it and writes a
// summary of what it removes (store.PruneAudit). A date in the future is
// *BadInput naming before.
func (r *Registry) PruneAudit(ctx context.Context, before time.Time, by pki.Identity) (store.PruneResult, error) {
	res, err := r.store.PruneAudit(ctx, before, by.String())
	if errors.Is(err, store.ErrPruneDate) {
		return res, &BadInput{Field: "before", Reason: err.Error(), Err: err}
	}
	if err != nil {
		return res, fmt.Errorf("audit prune to %s: %w", before.UTC().Format(time.RFC3339), err)
	}
	r.log.Info("audit trail pruned", "before", before, "by", by.String(), "subjects", res.Subjects, "events", res.Events)
	return res, nil
}

// Retention prunes the audit trail on its own (core's audit.retention).
type Retention struct {
	// Keep is how far back events are kept whole.
	Keep time.Duration
	// Every is how often the trail is pruned, the first time at start.
	Every time.Duration
	// Actor is who the summaries say pruned (core's identity).
	Actor string
}

// RunAuditRetention prunes the trail to Keep before now at start and then
// every Every, until ctx ends. A prune another core of the database is
// running is left to it; a failed one is logged and tried at the next.
func (r *Registry) RunAuditRetention(ctx context.Context, rt Retention) error {
	t := time.NewTicker(rt.Every)
	defer t.Stop()
	for {
		before := time.Now().Add(-rt.Keep)
		res, err := r.store.PruneAudit(ctx, before, rt.Actor)
		switch {
		case ctx.Err() != nil:
			return nil
		case errors.Is(err, store.ErrPruneRunning):
			r.log.Info("audit retention: a prune is running already; this one is skipped", "before", before)
		case err != nil:
			r.log.Error("audit retention: prune failed; tried again at the next", "before", before, "err", err)
		default:
			r.log.Info("audit retention: trail pruned", "before", before, "subjects", res.Subjects, "events", res.Events)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}
