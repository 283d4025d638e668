package postgres

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/fleetprov/prov/core/store"
)

// Register creates the record of a hardware ID or returns the existing
// one. The two uniqueness rules are the table's constraints: one INSERT …
// ON CONFLICT DO NOTHING decides, and only when it inserted nothing is the
// winner read (the same hardware ID: idempotent; another one with the
// serial: ErrCollision). The group row is held FOR SHARE so the event's
// generation is the group's as of the registration.
func (s *Store) Register(r store.Registration) (v *store.View, created bool, err error) {
	err = s.write("register", func(ctx context.Context, tx pgx.Tx) error {
		v, created = nil, false
		var graw []byte
		if err := tx.QueryRow(ctx, "SELECT record FROM groups WHERE name = $1 FOR SHARE", r.Group).Scan(&graw); errors.Is(err, pgx.ErrNoRows) {
			return s.existingOr(ctx, tx, r, &v, fmt.Errorf("%w %q", store.ErrUnknownGroup, r.Group))
		} else if err != nil {
			return err
		}
		g := &store.Group{}
		if err := decodeRecord(graw, g, "group "+r.Group); err != nil {
			return err
		}
		d, ev := store.NewDevice(r, g, s.stamp())
		raw, err := store.EncodeRecord(d)
		if err != nil {
			return err
		}
		subject := ev.Subject
		ev.Subject = "" // in its column
		event, err := store.EncodeRecord(ev)
		if err != nil {
			return err
		}
		// The device, its job and its event in one statement (one round
		// trip): the job and the event only if the device was inserted.
		var inserted int
		if err := tx.QueryRow(ctx, `WITH d AS (
				INSERT INTO devices (serial, hardware_key, group_name, version, record) VALUES ($1, $2, $3, $4, $5)
				ON CONFLICT DO NOTHING RETURNING serial),
			j AS (INSERT INTO jobs (kind, subject) SELECT $6, serial FROM d),
			a AS (INSERT INTO audit (subject, event) SELECT $7, $8 FROM d)
			SELECT count(*) FROM d`,
			d.Serial, r.ID.Key(), r.Group, int64(d.Version), raw, store.JobDevice, subject, event).Scan(&inserted); err != nil { //nolint:gosec // versions are far below 2^63
			return err
		}
		if inserted == 0 {
			return s.existingOr(ctx, tx, r, &v, nil)
		}
		v, created = store.NewView(d, g), true
		return nil
	})
	return v, created, err
}

// existingOr is the registration of a hardware ID already registered, the
// collision of its serial with another one's, or else err.
func (s *Store) existingOr(ctx context.Context, tx pgx.Tx, r store.Registration, v **store.View, err error) error {
	var serial string
	switch e := tx.QueryRow(ctx, "SELECT serial FROM devices WHERE hardware_key = $1", r.ID.Key()).Scan(&serial); {
	case e == nil:
		var verr error
		*v, verr = view(ctx, tx, serial, false)
		return verr
	case !errors.Is(e, pgx.ErrNoRows):
		return e
	}
	var taken bool
	if e := tx.QueryRow(ctx, "SELECT true FROM devices WHERE serial = $1", r.ID.Serial()).Scan(&taken); e == nil {
		return fmt.Errorf("%w: serial %s (hardware ID %s)", store.ErrCollision, r.ID.Serial(), r.ID.Key())
	} else if !errors.Is(e, pgx.ErrNoRows) {
		return e
	}
	if err == nil {
		// Nothing inserted, yet no row conflicts: cannot happen while rows
		// are never deleted.
		err = fmt.Errorf("%w: registration of %s conflicted with no row", store.ErrUnavailable, r.ID.Key())
	}
	return err
}

// Every read of a device with its group selects viewColumns from
// viewFrom: a device a rollout holds (held_at) is read with the record of
// the group's version it is held at.
const (
	viewColumns = "d.record, COALESCE(h.record, g.record), CASE WHEN d.held_at IS NULL THEN 0 WHEN h.record IS NULL THEN -1 ELSE 1 END"
	viewFrom    = "devices d JOIN groups g ON g.name = d.group_name LEFT JOIN group_versions h ON h.group_name = d.group_name AND h.version = d.held_at"
)

// view reads a device with its group; lock holds the device's row.
func view(ctx context.Context, q querier, serial string, lock bool) (*store.View, error) {
	sql := "SELECT " + viewColumns + " FROM " + viewFrom + " WHERE d.serial = $1"
	if lock {
		sql += " FOR UPDATE OF d"
	}
	var draw, graw []byte
	var held int
	if err := q.QueryRow(ctx, sql, serial).Scan(&draw, &graw, &held); errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("device %s: %w", serial, store.ErrNotFound)
	} else if err != nil {
		return nil, err
	}
	return decodeView(serial, draw, graw, held)
}

// decodeView decodes a device and its group's record; held is viewColumns'
// last: 0 not held, 1 held, -1 held at a version that is not kept (a
// damaged registry: never served the group's newer data instead).
func decodeView(serial string, draw, graw []byte, held int) (*store.View, error) {
	if held < 0 {
		return nil, fmt.Errorf("%w: device %s is held at a version of its group that is not kept", store.ErrUnavailable, serial)
	}
	var d store.Device
	var g store.Group
	if err := decodeRecord(draw, &d, "device "+serial); err != nil {
		return nil, err
	}
	if err := decodeRecord(graw, &g, "group of "+serial); err != nil {
		return nil, err
	}
	v := store.NewView(&d, &g)
	v.Held = held > 0
	return v, nil
}

// Device returns a device and its group.
func (s *Store) Device(serial string) (*store.View, error) {
	v, err := view(context.Background(), s.pool, serial, false)
	if err != nil {
		return nil, classify(err)
	}
	return v, nil
}

// List returns up to limit devices after cursor, in serial order, and the
// cursor of the next page ("" at the end).
func (s *Store) List(cursor string, limit int) ([]store.View, string, error) {
	ctx := context.Background()
	rows, err := s.pool.Query(ctx, "SELECT d.serial, "+viewColumns+" FROM "+viewFrom+" WHERE d.serial > $1 ORDER BY d.serial LIMIT $2", cursor, limit+1)
	if err != nil {
		return nil, "", classify(err)
	}
	defer rows.Close()
	var out []store.View
	next := ""
	for rows.Next() {
		if len(out) == limit {
			next = out[len(out)-1].Serial
			break
		}
		var serial string
		var draw, graw []byte
		var held int
		if err := rows.Scan(&serial, &draw, &graw, &held); err != nil {
			return nil, "", classify(err)
		}
		v, err := decodeView(serial, draw, graw, held)
		if err != nil {
			return nil, "", err
		}
		out = append(out, *v)
	}
	return out, next, classify0(rows.Err())
}

// modify changes device serial in one transaction that holds its row: fn
// changes v and returns the audit event (nil: no change to write) and may
// queue CA revocations in tx. The UPDATE carries the version and the row
// revision read, so it can only apply to what fn saw.
func (s *Store) modify(op, serial string, fn func(ctx context.Context, tx pgx.Tx, v *store.View) (*store.Event, error)) (*store.View, error) {
	var v *store.View
	err := s.write(op, func(ctx context.Context, tx pgx.Tx) error {
		var err error
		if v, err = view(ctx, tx, serial, true); err != nil {
			return err
		}
		was := v.Version
		ev, err := fn(ctx, tx, v)
		if err != nil || ev == nil {
			return err
		}
		raw, err := store.EncodeRecord(&v.Device)
		if err != nil {
			return err
		}
		tag, err := tx.Exec(ctx, "UPDATE devices SET record = $2, version = $3, rev = rev + 1 WHERE serial = $1 AND version = $4",
			serial, raw, int64(v.Version), int64(was)) //nolint:gosec // versions are far below 2^63
		if err != nil {
			return err
		}
		if tag.RowsAffected() != 1 {
			return fmt.Errorf("device %s changed meanwhile: %w", serial, store.ErrConflict)
		}
		return audit(ctx, tx, *ev)
	})
	if err != nil {
		return nil, err
	}
	return v, nil
}

// SetDeviceData changes a device's own data if its generation is still
// ifGeneration.
func (s *Store) SetDeviceData(serial string, ifGeneration uint64, c store.Change, actor string, check func(*store.View) error) (*store.View, error) {
	return s.change(serial, "set data", actor, func(v *store.View) (map[string]string, error) {
		if v.Generation() != ifGeneration {
			return nil, fmt.Errorf("device %s is at generation %d, not %d: %w", serial, v.Generation(), ifGeneration, store.ErrConflict)
		}
		v.Data = c.Apply(v.Data)
		if err := check(v); err != nil {
			return nil, &fnError{err}
		}
		return c.Detail(), nil
	})
}

// Reprovision moves a device to a new generation with the same data.
func (s *Store) Reprovision(serial, actor string) (*store.View, error) {
	return s.change(serial, "reprovision", actor, func(*store.View) (map[string]string, error) { return nil, nil })
}

// change moves an active device to its next version after fn changed it.
func (s *Store) change(serial, action, actor string, fn func(*store.View) (map[string]string, error)) (*store.View, error) {
	return s.modify(action, serial, func(ctx context.Context, tx pgx.Tx, v *store.View) (*store.Event, error) {
		ev, err := store.Advance(v, action, actor, s.stamp(), fn)
		if err != nil {
			return nil, err
		}
		return ev, enqueue(ctx, tx, store.JobDevice, serial)
	})
}

// Revoke marks a device revoked and queues every certificate known for it
// at the CA, in one transaction; revoking again queues them again.
func (s *Store) Revoke(serial, actor, reason string) (*store.View, error) {
	return s.modify("revoke", serial, func(ctx context.Context, tx pgx.Tx, v *store.View) (*store.Event, error) {
		now := s.stamp()
		for _, cert := range v.CertificateSerials() {
			if err := queueCARevocation(ctx, tx, serial, cert, store.RevokedReason(reason), now); err != nil {
				return nil, err
			}
		}
		return store.MarkRevoked(&v.Device, actor, reason, now), nil
	})
}

// SeenCertificate remembers a certificate a device used, once; for a
// revoked device it is also queued for revocation at the CA.
func (s *Store) SeenCertificate(serial string, c store.Certificate) error {
	_, err := s.modify("certificate seen", serial, func(ctx context.Context, tx pgx.Tx, v *store.View) (*store.Event, error) {
		now := s.stamp()
		if v.Status == store.Revoked {
			if err := queueCARevocation(ctx, tx, serial, c.Serial, store.LateReason, now); err != nil {
				return nil, err
			}
		}
		return store.AddSeen(&v.Device, c, now), nil
	})
	return err
}

// RecordIssued remembers a certificate a proxy had issued for the device;
// for a revoked device it is recorded, queued for revocation at the CA and
// refused with ErrRevoked.
func (s *Store) RecordIssued(serial string, c store.Issued) (*store.View, error) {
	revoked := false
	v, err := s.modify("certificate issued", serial, func(ctx context.Context, tx pgx.Tx, v *store.View) (*store.Event, error) {
		now := s.stamp()
		if revoked = v.Status == store.Revoked; revoked {
			if err := queueCARevocation(ctx, tx, serial, c.Serial, store.LateReason, now); err != nil {
				return nil, err
			}
		}
		return store.AddIssued(&v.Device, c, now), nil
	})
	if err != nil {
		return nil, err
	}
	if revoked {
		return nil, fmt.Errorf("device %s: certificate %s recorded and queued for revocation at the CA: %w", serial, c.Serial, store.ErrRevoked)
	}
	return v, nil
}

// PinFirstKey pins the key of the first certificate a device is seen with
// when its record predates key pinning.
func (s *Store) PinFirstKey(serial string, c store.Issued) (*store.View, bool, error) {
	pinned := false
	v, err := s.modify("key pinned", serial, func(_ context.Context, _ pgx.Tx, v *store.View) (*store.Event, error) {
		ev := store.PinKey(&v.Device, c, s.stamp())
		pinned = ev != nil
		return ev, nil
	})
	if err != nil {
		return nil, false, err
	}
	return v, pinned, nil
}
