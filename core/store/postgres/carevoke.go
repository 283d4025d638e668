package postgres

import (
	"context"
	"errors"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/fleetprov/prov/core/store"
)

// The queue of revocations at the CA (store's carevoke.go says why): one
// row per device and certificate, queued in the transaction that revokes.

// maxErrorText bounds the last error kept with an entry.
const maxErrorText = 300

// queueCARevocation queues one certificate, due now; one already queued
// keeps its history and is due again at once. One statement.
func queueCARevocation(ctx context.Context, tx pgx.Tx, device, certSerial, reason string, now time.Time) error {
	_, err := tx.Exec(ctx, `INSERT INTO ca_revocations (device, cert_serial, reason, since, next_attempt) VALUES ($1, $2, $3, $4, $4)
		ON CONFLICT (device, cert_serial) DO UPDATE SET next_attempt = EXCLUDED.next_attempt`, device, certSerial, reason, now)
	return err
}

const caColumns = "device, cert_serial, reason, since, attempts, last_error, next_attempt"

func scanCARevocations(rows pgx.Rows) ([]store.CARevocation, error) {
	defer rows.Close()
	var out []store.CARevocation
	for rows.Next() {
		var r store.CARevocation
		if err := rows.Scan(&r.Device, &r.Serial, &r.Reason, &r.Since, &r.Attempts, &r.LastError, &r.NextAttempt); err != nil {
			return nil, classify(err)
		}
		r.Since, r.NextAttempt = r.Since.UTC(), r.NextAttempt.UTC()
		out = append(out, r)
	}
	return out, classify0(rows.Err())
}

// PendingCARevocations are the device's certificates still to be revoked
// at the CA, by certificate serial.
func (s *Store) PendingCARevocations(device string) ([]store.CARevocation, error) {
	rows, err := s.pool.Query(context.Background(), "SELECT "+caColumns+" FROM ca_revocations WHERE device = $1 ORDER BY cert_serial", device)
	if err != nil {
		return nil, classify(err)
	}
	return scanCARevocations(rows)
}

// CARevocations reads the queue: what is due at now, longest waiting
// first, and when the next entry falls due.
func (s *Store) CARevocations(now time.Time) (*store.CARevocationQueue, error) {
	ctx := context.Background()
	q := &store.CARevocationQueue{}
	var next *time.Time
	err := s.pool.QueryRow(ctx, "SELECT count(*), min(next_attempt) FILTER (WHERE next_attempt > $1) FROM ca_revocations", now).Scan(&q.Pending, &next)
	if err != nil {
		return nil, classify(err)
	}
	if next != nil {
		q.Next = next.UTC()
	}
	rows, err := s.pool.Query(ctx, "SELECT "+caColumns+" FROM ca_revocations WHERE next_attempt <= $1 ORDER BY since, device, cert_serial", now)
	if err != nil {
		return nil, classify(err)
	}
	q.Due, err = scanCARevocations(rows)
	return q, err
}

// CARevocationDone takes a certificate the CA confirmed off the queue and
// writes the device's audit event; false when it was already gone. The
// DELETE … RETURNING decides which of two attempts completes it.
func (s *Store) CARevocationDone(device, certSerial, outcome string) (bool, error) {
	done := false
	err := s.write("CA revocation done", func(ctx context.Context, tx pgx.Tx) error {
		var attempts int
		err := tx.QueryRow(ctx, "DELETE FROM ca_revocations WHERE device = $1 AND cert_serial = $2 RETURNING attempts", device, certSerial).Scan(&attempts)
		if errors.Is(err, pgx.ErrNoRows) {
			return nil
		}
		if err != nil {
			return err
		}
		done = true
		return audit(ctx, tx, store.Event{At: s.stamp(), Actor: "core", Subject: "device/" + device, Action: "revoked at the CA",
			Detail: map[string]string{"serial": certSerial, "outcome": outcome, "attempts": strconv.Itoa(attempts + 1)}})
	})
	return done, err
}

// CARevocationFailed records a failed attempt and when to try again; an
// entry no longer queued is left alone.
func (s *Store) CARevocationFailed(device, certSerial, errText string, next time.Time) error {
	if len(errText) > maxErrorText {
		errText = errText[:maxErrorText] + "…"
	}
	return s.write("CA revocation failed", func(ctx context.Context, tx pgx.Tx) error {
		_, err := tx.Exec(ctx, `UPDATE ca_revocations SET attempts = attempts + 1, last_error = $3, next_attempt = $4
			WHERE device = $1 AND cert_serial = $2`, device, certSerial, errText, next.UTC())
		return err
	})
}
