package postgres

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/fleetprov/prov/core/store"
)

// Admit decides on a proxy's request to enroll a board (store.Admit) in
// one transaction: it holds the batch's row (every admission in a batch
// waits for the one before, so its places are counted once), then the
// serial's reservation, taken by one INSERT … ON CONFLICT DO UPDATE that
// locks the row whether it was there or not; the decision is the store's
// rule on what was read under those locks, and a refusal rolls back the
// placeholder the INSERT made.
func (s *Store) Admit(r store.AdmissionRequest) (*store.Admitted, error) {
	var out *store.Admitted
	err := s.write("admit", func(ctx context.Context, tx pgx.Tx) error {
		now := s.now()
		if err := lockBatch(ctx, tx, r.Batch); err != nil {
			return err
		}
		var st store.AdmissionState
		held, err := lockReservation(ctx, tx, r.Serial, true)
		if err != nil {
			return err
		}
		st.Held = held
		if r.Batch != "" {
			// A proxy that died holds no place past its lease.
			if _, err := tx.Exec(ctx, "DELETE FROM admissions WHERE batch = $1 AND expires <= $2 AND serial <> $3", r.Batch, now, r.Serial); err != nil {
				return err
			}
			if err := tx.QueryRow(ctx, `SELECT
				EXISTS (SELECT 1 FROM batch_members WHERE batch = $1 AND serial = $2),
				(SELECT count(*) FROM batch_members WHERE batch = $1) +
				(SELECT count(*) FROM admissions a WHERE a.batch = $1 AND a.expires > $3 AND a.serial <> $2
					AND NOT EXISTS (SELECT 1 FROM batch_members m WHERE m.batch = $1 AND m.serial = a.serial))`,
				r.Batch, r.Serial, now).Scan(&st.Member, &st.Taken); err != nil {
				return err
			}
		}
		switch v, err := view(ctx, tx, r.Serial, false); {
		case errors.Is(err, store.ErrNotFound):
		case err != nil:
			return err
		default:
			st.Issued = v.Issued
		}
		if out, err = store.DecideAdmission(r, st, now); err != nil {
			return &fnError{err}
		}
		res := out.Reservation
		_, err = tx.Exec(ctx, "UPDATE admissions SET batch = $2, key_sha256 = $3, proxy = $4, holders = $5, expires = $6 WHERE serial = $1",
			r.Serial, res.Batch, res.KeySHA256, res.Proxy, res.Holders, res.Expires)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("admit %s: %w", r.Serial, err)
	}
	return out, nil
}

// EndAdmission ends one admitted attempt (store.EndAdmission), taking the
// same locks in the same order as Admit.
func (s *Store) EndAdmission(batch, serial, keySHA256 string, enrolled bool) error {
	return s.write("end admission", func(ctx context.Context, tx pgx.Tx) error {
		if err := lockBatch(ctx, tx, batch); err != nil {
			return err
		}
		held, err := lockReservation(ctx, tx, serial, false)
		if err != nil {
			return err
		}
		if rest, changed := store.EndReservation(held, keySHA256); changed {
			if rest == nil {
				_, err = tx.Exec(ctx, "DELETE FROM admissions WHERE serial = $1", serial)
			} else {
				_, err = tx.Exec(ctx, "UPDATE admissions SET holders = $2 WHERE serial = $1", serial, rest.Holders)
			}
			if err != nil {
				return err
			}
		}
		if enrolled && batch != "" {
			_, err = tx.Exec(ctx, "INSERT INTO batch_members (batch, serial) VALUES ($1, $2) ON CONFLICT DO NOTHING", batch, serial)
		}
		return err
	})
}

// lockBatch holds batch's row until the transaction ends, making it first
// ("" is no batch: nothing to hold).
func lockBatch(ctx context.Context, tx pgx.Tx, batch string) error {
	if batch == "" {
		return nil
	}
	if _, err := tx.Exec(ctx, "INSERT INTO batches (name) VALUES ($1) ON CONFLICT DO NOTHING", batch); err != nil {
		return err
	}
	_, err := tx.Exec(ctx, "SELECT 1 FROM batches WHERE name = $1 FOR UPDATE", batch)
	return err
}

// lockReservation holds serial's reservation row and returns it (nil:
// none). With create, a row is made if there is none (a placeholder that
// holds no place: expired, no key), so that two admissions of a serial
// nobody holds wait for each other too.
func lockReservation(ctx context.Context, tx pgx.Tx, serial string, create bool) (*store.Reservation, error) {
	var res store.Reservation
	var err error
	if create {
		err = tx.QueryRow(ctx, `INSERT INTO admissions (serial, key_sha256, proxy, holders, expires) VALUES ($1, '', '', 1, 'epoch')
			ON CONFLICT (serial) DO UPDATE SET serial = excluded.serial
			RETURNING batch, key_sha256, proxy, holders, expires`, serial).Scan(&res.Batch, &res.KeySHA256, &res.Proxy, &res.Holders, &res.Expires)
	} else {
		err = tx.QueryRow(ctx, "SELECT batch, key_sha256, proxy, holders, expires FROM admissions WHERE serial = $1 FOR UPDATE",
			serial).Scan(&res.Batch, &res.KeySHA256, &res.Proxy, &res.Holders, &res.Expires)
	}
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return nil, nil
	case err != nil:
		return nil, err
	case res.KeySHA256 == "":
		return nil, nil // the placeholder
	}
	return &res, nil
}
