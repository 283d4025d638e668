package postgres

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/fleetprov/prov/core/store"
)

// pruneLock is the advisory lock a core holds while it prunes the audit
// trail: one prune at a time on a database, whichever core runs it
// ("audp" in ASCII; the cores' lock is "core").
const pruneLock = 0x61756470

// PruneAudit removes the events before `before` that are not the newest
// of their action in their subject's trail, leaving a summary of them
// (store.PlanPrune, the same rules as every engine). One core prunes at
// a time (an advisory lock, held on a connection of its own: a core that
// dies lets it go with its connection); another core's prune meanwhile is
// store.ErrPruneRunning. Events are read outside transactions and removed
// in transactions of up to store.PruneBatch events that lock only the
// rows they delete, which nothing else writes, so devices are served
// meanwhile. PostgreSQL reuses the space once (auto)vacuum has seen it.
func (s *Store) PruneAudit(ctx context.Context, before time.Time, actor string) (store.PruneResult, error) {
	var res store.PruneResult
	now := s.stamp()
	if err := store.CheckPruneDate(before, now); err != nil {
		return res, err
	}
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return res, fmt.Errorf("audit prune: %w", classify(err))
	}
	defer conn.Release()
	var locked bool
	if err := conn.QueryRow(ctx, "SELECT pg_try_advisory_lock($1)", pruneLock).Scan(&locked); err != nil {
		return res, fmt.Errorf("audit prune: %w", classify(err))
	}
	if !locked {
		return res, fmt.Errorf("%w (another core of this database holds its lock)", store.ErrPruneRunning)
	}
	defer func() {
		if _, err := conn.Exec(context.WithoutCancel(ctx), "SELECT pg_advisory_unlock($1)", pruneLock); err != nil {
			// A session lock must not go back to the pool with its
			// connection: closing it lets the lock go.
			_ = conn.Conn().Close(context.WithoutCancel(ctx)) //nolint:errcheck // the lock goes with the connection either way
		}
	}()
	upto, ok, err := s.lastSeqBefore(ctx, before)
	if err != nil || !ok {
		return res, err
	}
	after := ""
	for {
		if err := ctx.Err(); err != nil {
			return res, fmt.Errorf("audit prune: %w", err)
		}
		plans, last, err := s.planPrunes(ctx, after, upto, before, now, actor)
		if err != nil {
			return res, err
		}
		for len(plans) > 0 {
			n, events := 0, 0
			for n < len(plans) && (n == 0 || events+len(plans[n].Seqs) <= s.pruneMax) {
				events += len(plans[n].Seqs)
				n++
			}
			if err := s.write("audit prune", func(ctx context.Context, tx pgx.Tx) error { return applyPrunes(ctx, tx, plans[:n]) }); err != nil {
				return res, err
			}
			for _, p := range plans[:n] {
				res.Add(p)
			}
			plans = plans[n:]
		}
		if last == "" {
			return res, nil
		}
		after = last
	}
}

// lastSeqBefore finds, by bisection on the sequence numbers, the last
// event stamped before `before` (ok false: none). Sequence numbers are
// given in commit order and events are stamped just before, so they are
// in time order but for events written in the same moment: this bounds
// the events a prune reads (seq <= upto, a condition on the trail's
// index), and each is checked by its own time.
func (s *Store) lastSeqBefore(ctx context.Context, before time.Time) (upto int64, ok bool, err error) {
	// at is the first event from seq lo on: its seq and time.
	at := func(lo int64) (int64, time.Time, bool, error) {
		var seq int64
		var raw []byte
		err := s.pool.QueryRow(ctx, "SELECT seq, event FROM audit WHERE seq >= $1 ORDER BY seq LIMIT 1", lo).Scan(&seq, &raw)
		if errors.Is(err, pgx.ErrNoRows) {
			return 0, time.Time{}, false, nil
		}
		if err != nil {
			return 0, time.Time{}, false, classify(err)
		}
		var e store.Event
		if err := decodeRecord(raw, &e, fmt.Sprintf("audit %d", seq)); err != nil {
			return 0, time.Time{}, false, err
		}
		return seq, e.At, true, nil
	}
	lo, t, found, err := at(0)
	if err != nil || !found || !t.Before(before) {
		return 0, false, err
	}
	var hi int64
	if err := s.pool.QueryRow(ctx, "SELECT max(seq) FROM audit").Scan(&hi); err != nil {
		return 0, false, classify(err)
	}
	// lo is an event before the date; find the last one: the first event
	// from hi+1 on does not exist, so it is not.
	hi++
	for hi-lo > 1 {
		mid := lo + (hi-lo)/2
		seq, t, found, err := at(mid)
		if err != nil {
			return 0, false, err
		}
		if found && t.Before(before) && seq < hi {
			lo = seq
		} else {
			hi = mid
		}
	}
	return lo, true, nil
}

// pruneSubjects bounds the subjects one read of a prune reads: 500 for
// the default batch, a quarter of its events.
func (s *Store) pruneSubjects() int { return max(1, s.pruneMax/4) }

// planPrunes reads the events up to seq upto of the next subjects after
// `after` (up to pruneSubjects of them) and plans their prunes; last is
// the last subject read ("" at the end).
func (s *Store) planPrunes(ctx context.Context, after string, upto int64, before, now time.Time, actor string) (plans []*store.PrunePlan, last string, err error) {
	rows, err := s.pool.Query(ctx, `SELECT subject, seq, event FROM audit WHERE subject IN (
			SELECT DISTINCT subject FROM audit WHERE subject > $1 AND seq <= $2 ORDER BY subject LIMIT $3)
		AND seq <= $2 ORDER BY subject, seq`, after, upto, s.pruneSubjects())
	if err != nil {
		return nil, "", classify(err)
	}
	defer rows.Close()
	subjects := 0
	var old []store.Event
	flush := func() error {
		if len(old) == 0 {
			return nil
		}
		p, err := store.PlanPrune(old, before, now, actor)
		if p != nil {
			plans = append(plans, p)
		}
		old = old[:0]
		return err
	}
	for rows.Next() {
		var subject string
		var seq int64
		var raw []byte
		if err := rows.Scan(&subject, &seq, &raw); err != nil {
			return nil, "", classify(err)
		}
		if subject != last {
			if err := flush(); err != nil {
				return nil, "", err
			}
			last = subject
			subjects++
		}
		var e store.Event
		if err := decodeRecord(raw, &e, fmt.Sprintf("audit %d", seq)); err != nil {
			return nil, "", err
		}
		if !e.At.Before(before) {
			continue // written in the same moment as an older one
		}
		e.Seq, e.Subject = uint64(seq), subject //nolint:gosec // identity values are positive
		old = append(old, e)
	}
	if err := rows.Err(); err != nil {
		return nil, "", classify(err)
	}
	if err := flush(); err != nil {
		return nil, "", err
	}
	if subjects < s.pruneSubjects() {
		last = ""
	}
	return plans, last, nil
}

// applyPrunes removes what plans remove and writes their summaries, each
// at the sequence number of the oldest event it stands for (OVERRIDING
// SYSTEM VALUE: a number the identity gave out before, freed in the same
// statement's transaction).
func applyPrunes(ctx context.Context, tx pgx.Tx, plans []*store.PrunePlan) error {
	var seqs, summarySeqs []int64
	var subjects []string
	var events [][]byte
	for _, p := range plans {
		for _, seq := range p.Seqs {
			seqs = append(seqs, int64(seq)) //nolint:gosec // sequence numbers are far below 2^63
		}
		e := p.Summary
		summarySeqs, subjects = append(summarySeqs, int64(e.Seq)), append(subjects, e.Subject) //nolint:gosec // as above
		e.Seq, e.Subject = 0, ""                                                               // in the columns
		raw, err := store.EncodeRecord(e)
		if err != nil {
			return err
		}
		events = append(events, raw)
	}
	tag, err := tx.Exec(ctx, "DELETE FROM audit WHERE seq = ANY($1)", seqs)
	if err != nil {
		return err
	}
	if tag.RowsAffected() != int64(len(seqs)) {
		// Only a prune removes events, and one runs at a time.
		return fmt.Errorf("%w: audit prune removed %d events of %d planned", store.ErrConflict, tag.RowsAffected(), len(seqs))
	}
	_, err = tx.Exec(ctx, `INSERT INTO audit (seq, subject, event) OVERRIDING SYSTEM VALUE
		SELECT * FROM unnest($1::bigint[], $2::text[], $3::bytea[])`, summarySeqs, subjects, events)
	return err
}
