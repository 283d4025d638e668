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
		err := each(ctx, tx, `SELECT name, record FROM groups ORDER BY name COLLATE "C"`, func(rows pgx.Rows) error {
			var name string
			var raw []byte
			if err := rows.Scan(&name, &raw); err != nil {
				return err
			}
			var g store.Group
			if err := decodeRecord(raw, &g, "group "+name); err != nil {
				return err
			}
			return own(to.Group(&g))
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
		return each(ctx, tx, `SELECT batch, serial FROM batch_members ORDER BY batch COLLATE "C", serial COLLATE "C"`, func(rows pgx.Rows) error {
			var batch, serial string
			if err := rows.Scan(&batch, &serial); err != nil {
				return err
			}
			return own(to.BatchMember(batch, serial))
		})
	})
	if err != nil {
		return fmt.Errorf("export: %w", classify(err))
	}
	return nil
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
// the way); audit events keep their sequence numbers, and the sequence
// goes on after the highest.
func (s *Store) Import(ctx context.Context, from store.Exporter) (store.Counts, error) {
	var n store.Counts
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "LOCK TABLE groups, devices, audit, ca_revocations, batches, batch_members IN ACCESS EXCLUSIVE MODE"); err != nil {
			return err
		}
		var held store.Counts
		if err := tx.QueryRow(ctx, `SELECT (SELECT count(*) FROM groups), (SELECT count(*) FROM devices),
			(SELECT count(*) FROM audit), (SELECT count(*) FROM ca_revocations), (SELECT count(*) FROM batch_members)`).Scan(
			&held.Groups, &held.Devices, &held.Audit, &held.CARevocations, &held.BatchMembers); err != nil {
			return err
		}
		if held != (store.Counts{}) {
			return &fnError{fmt.Errorf("%w (%s): import only into an empty database", ErrNotEmpty, held)}
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
		})
		if err != nil {
			return &fnError{fmt.Errorf("read the source: %w", err)}
		}
		if err := c.flush(); err != nil {
			return err
		}
		// The next event is numbered after the highest imported one.
		_, err = tx.Exec(ctx, `SELECT setval(pg_get_serial_sequence('audit', 'seq'), coalesce(max(seq), 1), max(seq) IS NOT NULL) FROM audit`)
		return err
	})
	if err != nil {
		return store.Counts{}, fmt.Errorf("import: %w", classify(err))
	}
	return n, nil
}

// The tables Import fills, in the order their rows must arrive (a device
// names its group).
const (
	tableGroups = iota
	tableDevices
	tableAudit
	tableCARevocations
	tableBatches
	tableBatchMembers
)

var importTables = [...]struct {
	name    string
	columns []string
}{
	tableGroups:        {"groups", []string{"name", "version", "record"}},
	tableDevices:       {"devices", []string{"serial", "hardware_key", "group_name", "version", "record"}},
	tableAudit:         {"audit", []string{"seq", "subject", "event"}},
	tableCARevocations: {"ca_revocations", []string{"device", "cert_serial", "reason", "since", "attempts", "last_error", "next_attempt"}},
	tableBatches:       {"batches", []string{"name"}},
	tableBatchMembers:  {"batch_members", []string{"batch", "serial"}},
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
