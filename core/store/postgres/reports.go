package postgres

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/fleetprov/prov/core/contract/coreapi"
	"github.com/fleetprov/prov/core/store"
)

// SaveReport keeps a device's latest report (store.NextReport): the row
// read FOR UPDATE, so two reports of one device are applied one after
// the other.
func (s *Store) SaveReport(serial string, r coreapi.Report) (*store.Report, error) {
	var out *store.Report
	err := s.write("report", func(ctx context.Context, tx pgx.Tx) error {
		var raw []byte
		var old *store.Report
		switch err := tx.QueryRow(ctx, "SELECT record FROM device_reports WHERE serial = $1 FOR UPDATE", serial).Scan(&raw); {
		case errors.Is(err, pgx.ErrNoRows):
		case err != nil:
			return err
		default:
			old = &store.Report{}
			if err := decodeRecord(raw, old, "report of "+serial); err != nil {
				return err
			}
		}
		next, ev, save := store.NextReport(serial, old, r, s.stamp())
		out = next
		if !save {
			return nil
		}
		rec, err := store.EncodeRecord(next)
		if err != nil {
			return err
		}
		_, err = tx.Exec(ctx, "INSERT INTO device_reports (serial, record) VALUES ($1, $2) ON CONFLICT (serial) DO UPDATE SET record = excluded.record", serial, rec)
		var pe *pgconn.PgError
		if errors.As(err, &pe) && pe.Code == "23503" { // foreign_key_violation: no such device
			return fmt.Errorf("device %s: %w", serial, store.ErrNotFound)
		}
		if err != nil || ev == nil {
			return err
		}
		return audit(ctx, tx, *ev)
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// Report is a device's latest report; nil if it never reported.
func (s *Store) Report(serial string) (*store.Report, error) {
	var raw []byte
	err := s.pool.QueryRow(context.Background(), "SELECT record FROM device_reports WHERE serial = $1", serial).Scan(&raw)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, classify(err)
	}
	rep := &store.Report{}
	return rep, decodeRecord(raw, rep, "report of "+serial)
}

// GroupStates calls fn with each member of a group, in serial order.
func (s *Store) GroupStates(group string, fn func(store.MemberState) error) error {
	return s.memberStates(fn, "WHERE d.group_name = $1 ORDER BY d.serial", group)
}

// WaveStates calls fn with each member a rollout's wave released.
func (s *Store) WaveStates(id uint64, wave int, fn func(store.MemberState) error) error {
	return s.memberStates(fn, "JOIN rollout_members m ON m.serial = d.serial WHERE m.rollout = $1 AND m.wave = $2 ORDER BY d.serial", int64(id), wave) //nolint:gosec // IDs are far below 2^63
}

// memberStates calls fn with the states of the devices where selects.
func (s *Store) memberStates(fn func(store.MemberState) error, where string, args ...any) error {
	ctx := context.Background()
	rows, err := s.pool.Query(ctx, "SELECT d.serial, "+viewColumns+", r.record FROM "+viewFrom+" LEFT JOIN device_reports r ON r.serial = d.serial "+where, args...)
	if err != nil {
		return classify(err)
	}
	defer rows.Close()
	for rows.Next() {
		var serial string
		var draw, graw, rraw []byte
		var held int
		if err := rows.Scan(&serial, &draw, &graw, &held, &rraw); err != nil {
			return classify(err)
		}
		v, err := decodeView(serial, draw, graw, held)
		if err != nil {
			return err
		}
		m := store.MemberState{Serial: serial, Status: v.Status, Generation: v.Generation(), Held: v.Held}
		if rraw != nil {
			m.Report = &store.Report{}
			if err := decodeRecord(rraw, m.Report, "report of "+serial); err != nil {
				return err
			}
		}
		if err := fn(m); err != nil {
			return err
		}
	}
	return classify0(rows.Err())
}
