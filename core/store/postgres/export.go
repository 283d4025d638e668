package postgres

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/fleetprov/prov/core/store"
)

var _ store.Exporter = (*Store)(nil)

// Export reads the whole registry in one read-only, repeatable-read
// transaction (one snapshot), in the order store.Exported gives: text
// ordered by bytes (COLLATE "C"), as bbolt orders its keys, whatever the
// database's locale.
func (s *Store) Export(to store.Exported) error {
	ctx := context.Background()
	err := pgx.BeginTxFunc(ctx, s.pool, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly}, func(tx pgx.Tx) error {
		err := eachRecord(ctx, tx, `SELECT name, record FROM groups ORDER BY name COLLATE "C"`, "group %s", func(_ string, g *store.Group) error {
			return to.Group(g)
		})
		if err != nil {
			return err
		}
		err = each(ctx, tx, `SELECT serial, hardware_key, record FROM devices ORDER BY serial COLLATE "C"`, func(rows pgx.Rows) error {
			var serial, key string
			var raw []byte
			if err := rows.Scan(&serial, &key, &raw); err != nil {
				return err
			}
			var d store.Device
			if err := decodeRecord(raw, &d, "device "+serial); err != nil {
				return err
			}
			return own(to.Device(key, &d))
		})
		if err != nil {
			return err
		}
		err = each(ctx, tx, `SELECT subject, seq, event FROM audit ORDER BY subject COLLATE "C", seq`, func(rows pgx.Rows) error {
			var subject string
			var seq int64
			var raw []byte
			if err := rows.Scan(&subject, &seq, &raw); err != nil {
				return err
			}
			var e store.Event
			if err := decodeRecord(raw, &e, fmt.Sprintf("audit %d", seq)); err != nil {
				return err
			}
			e.Subject, e.Seq = subject, uint64(seq) //nolint:gosec // identity values are positive
			return own(to.Audit(&e))
		})
		if err != nil {
			return err
		}
		rows, err := tx.Query(ctx, "SELECT "+caColumns+` FROM ca_revocations ORDER BY device COLLATE "C", cert_serial COLLATE "C"`)
		if err != nil {
			return err
		}
		queue, err := scanCARevocations(rows)
		if err != nil {
			return err
		}
		for i := range queue {
			if err := own(to.CARevocation(&queue[i])); err != nil {
				return err
			}
		}
		err = each(ctx, tx, `SELECT batch, serial FROM batch_members ORDER BY batch COLLATE "C", serial COLLATE "C"`, func(rows pgx.Rows) error {
			var batch, serial string
			if err := rows.Scan(&batch, &serial); err != nil {
				return err
			}
			return own(to.BatchMember(batch, serial))
		})
		if err != nil {
			return err
		}
		return exportRollouts(ctx, tx, to)
	})
	if err != nil {
		return fmt.Errorf("export: %w", classify(err))
	}
	return nil
}

// exportRollouts yields what reports and rollouts keep, in
// store.Exported's order.
func exportRollouts(ctx context.Context, tx pgx.Tx, to store.Exported) error {
	err := eachRecord(ctx, tx, `SELECT serial, record FROM device_reports ORDER BY serial COLLATE "C"`, "report of %s", to.Report)
	if err != nil {
		return err
	}
	err = each(ctx, tx, `SELECT group_name, version, record FROM group_versions ORDER BY group_name COLLATE "C", version`, func(rows pgx.Rows) error {
		var name string
		var version int64
		var raw []byte
		if err := rows.Scan(&name, &version, &raw); err != nil {
			return err
		}
		var g store.Group
		if err := decodeRecord(raw, &g, fmt.Sprintf("version %d of group %s", version, name)); err != nil {
			return err
		}
		// A held member's read finds the record by its columns.
		if g.Name != name || int64(g.Version) != version { //nolint:gosec // versions are far below 2^63
			return fmt.Errorf("%w: the record kept as version %d of group %s is version %d of %q", store.ErrUnavailable, version, name, g.Version, g.Name)
		}
		return own(to.GroupVersion(&g))
	})
	if err != nil {
		return err
	}
	err = each(ctx, tx, `SELECT group_name, serial, held_at FROM devices WHERE held_at IS NOT NULL ORDER BY group_name COLLATE "C", serial COLLATE "C"`, func(rows pgx.Rows) error {
		var group, serial string
		var version int64
		if err := rows.Scan(&group, &serial, &version); err != nil {
			return err
		}
		return own(to.Hold(group, serial, uint64(version))) //nolint:gosec // versions are positive
	})
	if err != nil {
		return err
	}
	err = eachRecord(ctx, tx, `SELECT id, record FROM rollouts ORDER BY id`, "rollout %d", func(id int64, ro *store.Rollout) error {
		if int64(ro.ID) != id { //nolint:gosec // IDs are far below 2^63
			return fmt.Errorf("%w: the record of rollout %d is rollout %d's", store.ErrUnavailable, id, ro.ID)
		}
		return to.Rollout(ro)
	})
	if err != nil {
		return err
	}
	return each(ctx, tx, `SELECT rollout, wave, serial FROM rollout_members ORDER BY rollout, wave, serial COLLATE "C"`, func(rows pgx.Rows) error {
		var id int64
		var wave int32
		var serial string
		if err := rows.Scan(&id, &wave, &serial); err != nil {
			return err
		}
		return own(to.WaveMember(uint64(id), int(wave), serial)) //nolint:gosec // IDs are positive
	})
}

// eachRecord calls fn with the key and the record, decoded, of every row
// of a query that selects (key, record); what names a record by its key
// in an error. fn's errors are the caller's (own).
func eachRecord[K any, R any](ctx context.Context, q querier, sql, what string, fn func(K, *R) error) error {
	return each(ctx, q, sql, func(rows pgx.Rows) error {
		var key K
		var raw []byte
		if err := rows.Scan(&key, &raw); err != nil {
			return err
		}
		rec := new(R)
		if err := decodeRecord(raw, rec, fmt.Sprintf(what, key)); err != nil {
			return err
		}
		return own(fn(key, rec))
	})
}

// own marks an error of the caller's function (returned as it is), if any.
func own(err error) error {
	if err == nil {
		return nil
	}
	return &fnError{err}
}

// each calls fn for every row of a query.
func each(ctx context.Context, q querier, sql string, fn func(pgx.Rows) error) error {
	rows, err := q.Query(ctx, sql)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		if err := fn(rows); err != nil {
			return err
		}
	}
	return rows.Err()
}

// importBatch is how many rows one COPY carries.
const importBatch = 5000

// Import fills an empty registry with everything from (another engine,
// read whole) in one transaction: all of it or nothing. The tables are
// locked against every other session while it runs, and a registry that
// holds anything at all is refused (ErrNotEmpty): Import never overwrites
// or merges. Records are decoded and encoded again (each is checked on
// the way); audit events and rollouts keep their numbers, and each
// sequence goes on after the highest; the holds of rollouts are set on
// their devices once these are in.
func (s *Store) Import(ctx context.Context, from store.Exporter) (store.Counts, error) {
	var n store.Counts
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `LOCK TABLE groups, devices, audit, ca_revocations, batches, batch_members,
			device_reports, group_versions, rollouts, rollout_members IN ACCESS EXCLUSIVE MODE`); err != nil {
			return err
		}
		var held store.Counts
		if err := tx.QueryRow(ctx, `SELECT (SELECT count(*) FROM groups), (SELECT count(*) FROM devices),
			(SELECT count(*) FROM audit), (SELECT count(*) FROM ca_revocations), (SELECT count(*) FROM batch_members),
			(SELECT count(*) FROM device_reports), (SELECT count(*) FROM group_versions), (SELECT count(*) FROM devices WHERE held_at IS NOT NULL),
			(SELECT count(*) FROM rollouts), (SELECT count(*) FROM rollout_members)`).Scan(
			&held.Groups, &held.Devices, &held.Audit, &held.CARevocations, &held.BatchMembers,
			&held.Reports, &held.GroupVersions, &held.Holds, &held.Rollouts, &held.WaveMembers); err != nil {
			return err
		}
		if held != (store.Counts{}) {
			return &fnError{fmt.Errorf("%w (%s): import only into an empty database", ErrNotEmpty, held)}
		}
		if _, err := tx.Exec(ctx, "CREATE TEMPORARY TABLE "+importHolds+" (group_name text, serial text, held_at bigint) ON COMMIT DROP"); err != nil {
			return err
		}
		c := &copier{ctx: ctx, tx: tx}
		batches := map[string]bool{}
		err := from.Export(store.Exported{
			Group: func(g *store.Group) error {
				raw, err := store.EncodeRecord(g)
				n.Groups++
				return c.add(tableGroups, err, g.Name, int64(g.Version), raw) //nolint:gosec // versions are far below 2^63
			},
			Device: func(key string, d *store.Device) error {
				raw, err := store.EncodeRecord(d)
				n.Devices++
				return c.add(tableDevices, err, d.Serial, key, d.Group, int64(d.Version), raw) //nolint:gosec // as above
			},
			Audit: func(e *store.Event) error {
				ev := *e
				ev.Seq, ev.Subject = 0, "" // in the columns
				raw, err := store.EncodeRecord(ev)
				n.Audit++
				return c.add(tableAudit, err, int64(e.Seq), e.Subject, raw) //nolint:gosec // sequence numbers are far below 2^63
			},
			CARevocation: func(r *store.CARevocation) error {
				n.CARevocations++
				return c.add(tableCARevocations, nil, r.Device, r.Serial, r.Reason, r.Since, r.Attempts, r.LastError, r.NextAttempt)
			},
			BatchMember: func(batch, serial string) error {
				n.BatchMembers++
				if !batches[batch] {
					batches[batch] = true
					if err := c.add(tableBatches, nil, batch); err != nil {
						return err
					}
				}
				return c.add(tableBatchMembers, nil, batch, serial)
			},
			Report: func(serial string, r *store.Report) error {
				raw, err := store.EncodeRecord(r)
				n.Reports++
				return c.add(tableReports, err, serial, raw)
			},
			GroupVersion: func(g *store.Group) error {
				raw, err := store.EncodeRecord(g)
				n.GroupVersions++
				return c.add(tableGroupVersions, err, g.Name, int64(g.Version), raw) //nolint:gosec // versions are far below 2^63
			},
			Hold: func(group, serial string, version uint64) error {
				n.Holds++
				return c.add(tableHolds, nil, group, serial, int64(version)) //nolint:gosec // as above
			},
			Rollout: func(ro *store.Rollout) error {
				raw, err := store.EncodeRecord(ro)
				n.Rollouts++
				return c.add(tableRollouts, err, int64(ro.ID), ro.Group, ro.State.Active(), int64(ro.Rev), raw) //nolint:gosec // IDs and revs are far below 2^63
			},
			WaveMember: func(id uint64, wave int, serial string) error {
				n.WaveMembers++
				return c.add(tableRolloutMembers, nil, int64(id), wave, serial) //nolint:gosec // as above
			},
		})
		if err != nil {
			return &fnError{fmt.Errorf("read the source: %w", err)}
		}
		if err := c.flush(); err != nil {
			return err
		}
		if err := applyHolds(ctx, tx, n.Holds); err != nil {
			return err
		}
		// The next event is numbered after the highest imported one, and
		// the next rollout after the highest imported one.
		_, err = tx.Exec(ctx, `SELECT setval(pg_get_serial_sequence('audit', 'seq'), coalesce(max(seq), 1), max(seq) IS NOT NULL) FROM audit`)
		if err != nil {
			return err
		}
		_, err = tx.Exec(ctx, `SELECT setval('rollout_ids', coalesce(max(id), 1), max(id) IS NOT NULL) FROM rollouts`)
		return err
	})
	if err != nil {
		return store.Counts{}, fmt.Errorf("import: %w", classify(err))
	}
	return n, nil
}

// applyHolds sets the held_at column of each device the import holds
// (copied into importHolds) in one UPDATE. A hold must name a member of
// its group and a kept version of it: a read of a device whose held_at
// names no kept version would serve the group's current data, the very
// thing the hold is for.
func applyHolds(ctx context.Context, tx pgx.Tx, holds int) error {
	if holds == 0 {
		return nil
	}
	tag, err := tx.Exec(ctx, `UPDATE devices d SET held_at = h.held_at FROM `+importHolds+` h
		WHERE d.serial = h.serial AND d.group_name = h.group_name
		AND EXISTS (SELECT 1 FROM group_versions v WHERE v.group_name = h.group_name AND v.version = h.held_at)`)
	if err != nil {
		return fmt.Errorf("hold devices: %w", err)
	}
	if got := tag.RowsAffected(); got != int64(holds) {
		return &fnError{fmt.Errorf("%w: of %d holds, %d name a member of their group and a kept version of it", store.ErrUnavailable, holds, got)}
	}
	return nil
}

// The tables Import fills, in the order their rows must arrive (a device
// names its group, a wave member its rollout and device).
const (
	tableGroups = iota
	tableDevices
	tableAudit
	tableCARevocations
	tableBatches
	tableBatchMembers
	tableReports
	tableGroupVersions
	tableHolds
	tableRollouts
	tableRolloutMembers
)

// importHolds is the temporary table the holds are copied into, then
// applied to devices.held_at by one UPDATE (applyHolds).
const importHolds = "import_holds"

var importTables = [...]struct {
	name    string
	columns []string
}{
	tableGroups:         {"groups", []string{"name", "version", "record"}},
	tableDevices:        {"devices", []string{"serial", "hardware_key", "group_name", "version", "record"}},
	tableAudit:          {"audit", []string{"seq", "subject", "event"}},
	tableCARevocations:  {"ca_revocations", []string{"device", "cert_serial", "reason", "since", "attempts", "last_error", "next_attempt"}},
	tableBatches:        {"batches", []string{"name"}},
	tableBatchMembers:   {"batch_members", []string{"batch", "serial"}},
	tableReports:        {"device_reports", []string{"serial", "record"}},
	tableGroupVersions:  {"group_versions", []string{"group_name", "version", "record"}},
	tableHolds:          {importHolds, []string{"group_name", "serial", "held_at"}},
	tableRollouts:       {"rollouts", []string{"id", "group_name", "active", "rev", "record"}},
	tableRolloutMembers: {"rollout_members", []string{"rollout", "wave", "serial"}},
}

// copier batches rows per table and writes them with COPY, every table
// before the ones after it.
type copier struct {
	ctx     context.Context
	tx      pgx.Tx
	pending [len(importTables)][][]any
}

func (c *copier) add(table int, err error, row ...any) error {
	if err != nil {
		return err
	}
	c.pending[table] = append(c.pending[table], row)
	if len(c.pending[table]) < importBatch {
		return nil
	}
	return c.flush()
}

func (c *copier) flush() error {
	for i, rows := range c.pending {
		if len(rows) == 0 {
			continue
		}
		t := importTables[i]
		if _, err := c.tx.CopyFrom(c.ctx, pgx.Identifier{t.name}, t.columns, pgx.CopyFromRows(rows)); err != nil {
			return fmt.Errorf("copy into %s: %w", t.name, err)
		}
		c.pending[i] = c.pending[i][:0]
	}
	return nil
}
