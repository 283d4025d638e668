package postgres

import (
	"context"
	"errors"
	"fmt"
	"maps"

	"github.com/jackc/pgx/v5"

	"github.com/fleetprov/prov/core/contract/coreapi"
	"github.com/fleetprov/prov/core/store"
)

// StartRollout changes a group's data as a rollout (store.Bolt's
// StartRollout says what): the group's row is locked, its record as it
// was kept in group_versions, every member not yet held held at it in one
// UPDATE, and the rollout inserted, at most one active per group by the
// table's unique index.
func (s *Store) StartRollout(ro *store.Rollout, ifVersion uint64, c store.Change, actor string, check func(*store.Group) error) (*store.Rollout, *store.Group, error) {
	var out *store.Rollout
	var g *store.Group
	err := s.write("start rollout", func(ctx context.Context, tx pgx.Tx) error {
		var err error
		if g, err = group(ctx, tx, ro.Group, true); errors.Is(err, store.ErrNotFound) {
			return fmt.Errorf("%w %q", store.ErrUnknownGroup, ro.Group)
		} else if err != nil {
			return err
		}
		if g.Rollout != 0 {
			return fmt.Errorf("group %s: rollout %d: %w", g.Name, g.Rollout, store.ErrRolloutActive)
		}
		if g.Version != ifVersion {
			return fmt.Errorf("group %s is at version %d, not %d: %w", g.Name, g.Version, ifVersion, store.ErrConflict)
		}
		was, err := store.EncodeRecord(g)
		if err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, "INSERT INTO group_versions (group_name, version, record) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
			g.Name, int64(g.Version), was); err != nil { //nolint:gosec // versions are far below 2^63
			return err
		}
		var id int64
		if err := tx.QueryRow(ctx, "SELECT nextval('rollout_ids')").Scan(&id); err != nil {
			return err
		}
		now := s.stamp()
		out = store.StartRolloutRecord(ro, g, uint64(id), actor, c) //nolint:gosec // sequence values are positive
		out.CreatedAt, out.UpdatedAt = now, now
		if _, err := tx.Exec(ctx, "UPDATE devices SET held_at = $2 WHERE group_name = $1 AND held_at IS NULL", g.Name, int64(g.Version)); err != nil { //nolint:gosec // versions are far below 2^63
			return err
		}
		if err := tx.QueryRow(ctx, "SELECT count(*) FROM devices WHERE group_name = $1", g.Name).Scan(&out.Members); err != nil {
			return err
		}
		g.Data = c.Apply(g.Data)
		if err := check(g); err != nil {
			return &fnError{err}
		}
		g.Version++
		g.VersionAt = now
		g.Rollout = out.ID
		if err := saveGroup(ctx, tx, g, ifVersion); err != nil {
			return err
		}
		rec, err := store.EncodeRecord(out)
		if err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, "INSERT INTO rollouts (id, group_name, active, rev, record) VALUES ($1, $2, true, $3, $4)", id, g.Name, int64(out.Rev), rec); err != nil { //nolint:gosec // revs are small
			return err
		}
		detail := c.Detail()
		detail["rollout"] = fmt.Sprint(id)
		return audit(ctx, tx, store.Event{At: now, Actor: actor, Subject: "group/" + g.Name, Action: "rollout start", Detail: detail})
	})
	if err != nil {
		return nil, nil, err
	}
	return out, g, nil
}

// saveGroup writes g if its row is still at version was.
func saveGroup(ctx context.Context, tx pgx.Tx, g *store.Group, was uint64) error {
	raw, err := store.EncodeRecord(g)
	if err != nil {
		return err
	}
	tag, err := tx.Exec(ctx, "UPDATE groups SET record = $2, version = $3 WHERE name = $1 AND version = $4", g.Name, raw, int64(g.Version), int64(was)) //nolint:gosec // versions are far below 2^63
	if err != nil {
		return err
	}
	if tag.RowsAffected() != 1 {
		return fmt.Errorf("group %s changed meanwhile: %w", g.Name, store.ErrConflict)
	}
	return nil
}

// lockedRollout reads a rollout, its row locked.
func lockedRollout(ctx context.Context, tx pgx.Tx, id uint64) (*store.Rollout, error) {
	var raw []byte
	if err := tx.QueryRow(ctx, "SELECT record FROM rollouts WHERE id = $1 FOR UPDATE", int64(id)).Scan(&raw); errors.Is(err, pgx.ErrNoRows) { //nolint:gosec // IDs are far below 2^63
		return nil, fmt.Errorf("rollout %d: %w", id, store.ErrNotFound)
	} else if err != nil {
		return nil, err
	}
	ro := &store.Rollout{}
	return ro, decodeRecord(raw, ro, fmt.Sprintf("rollout %d", id))
}

// saveRollout writes a rollout's record.
func saveRollout(ctx context.Context, tx pgx.Tx, ro *store.Rollout) error {
	rec, err := store.EncodeRecord(ro)
	if err != nil {
		return err
	}
	_, err = tx.Exec(ctx, "UPDATE rollouts SET record = $2, rev = $3, active = $4 WHERE id = $1", int64(ro.ID), rec, int64(ro.Rev), ro.State.Active()) //nolint:gosec // IDs and revs are far below 2^63
	return err
}

// StepRollout stores a rollout's next state and releases the step's
// members in one transaction: their holds removed by one UPDATE, a device
// job each (and a notification, so every core shares them), the wave
// recorded; a rollout that ends lets its group's data change again.
func (s *Store) StepRollout(st store.RolloutStep) (*store.Rollout, []string, error) {
	var out *store.Rollout
	var released []string
	err := s.write("step rollout", func(ctx context.Context, tx pgx.Tx) error {
		released = nil
		stored, err := lockedRollout(ctx, tx, st.Next.ID)
		if err != nil {
			return err
		}
		if err := store.CheckStep(stored, st.IfRev); err != nil {
			return &fnError{err}
		}
		if len(st.Release) > 0 {
			rows, err := tx.Query(ctx, "UPDATE devices SET held_at = NULL WHERE group_name = $1 AND serial = ANY($2) AND held_at IS NOT NULL RETURNING serial",
				stored.Group, st.Release)
			if err != nil {
				return err
			}
			if released, err = pgx.CollectRows(rows, pgx.RowTo[string]); err != nil {
				return err
			}
			if _, err := tx.Exec(ctx, `INSERT INTO rollout_members (rollout, wave, serial)
				SELECT $1, $2, serial FROM devices WHERE group_name = $3 AND serial = ANY($4) ON CONFLICT DO NOTHING`,
				int64(stored.ID), st.Wave, stored.Group, st.Release); err != nil { //nolint:gosec // IDs are far below 2^63
				return err
			}
			if len(released) > 0 {
				if _, err := tx.Exec(ctx, `WITH j AS (INSERT INTO jobs (kind, subject) SELECT $1, unnest($2::text[]))
					SELECT pg_notify('`+jobsChannel+`', '')`, store.JobDevice, released); err != nil {
					return err
				}
			}
		}
		now := s.stamp()
		next := *st.Next
		next.Rev, next.UpdatedAt = stored.Rev+1, now
		if err := saveRollout(ctx, tx, &next); err != nil {
			return err
		}
		if !next.State.Active() {
			if _, err := endRollout(ctx, tx, next.Group, nil); err != nil {
				return err
			}
		}
		out = &next
		return audit(ctx, tx, store.Event{At: now, Actor: st.Actor, Subject: "group/" + next.Group, Action: st.Action,
			Detail: store.RolloutDetail(&next, st.Detail, len(released))})
	})
	if err != nil {
		return nil, nil, err
	}
	return out, released, nil
}

// endRollout clears a group's active rollout; change, if set, changes its
// data too, as a new version (an abort), and its members are told.
func endRollout(ctx context.Context, tx pgx.Tx, name string, change func(g *store.Group) error) (*store.Group, error) {
	g, err := group(ctx, tx, name, true)
	if err != nil {
		return nil, err
	}
	was := g.Version
	g.Rollout = 0
	if change != nil {
		if err := change(g); err != nil {
			return nil, err
		}
		if err := enqueueShared(ctx, tx, "group", name); err != nil {
			return nil, err
		}
	}
	return g, saveGroup(ctx, tx, g, was)
}

// AbortRollout ends a rollout by changing its group's data back to the
// version it started from, as a new version.
func (s *Store) AbortRollout(next *store.Rollout, ifRev uint64, actor, reason string, check func(*store.Group) error) (*store.Rollout, *store.Group, error) {
	var out *store.Rollout
	var g *store.Group
	err := s.write("abort rollout", func(ctx context.Context, tx pgx.Tx) error {
		stored, err := lockedRollout(ctx, tx, next.ID)
		if err != nil {
			return err
		}
		if err := store.CheckStep(stored, ifRev); err != nil {
			return &fnError{err}
		}
		var raw []byte
		if err := tx.QueryRow(ctx, "SELECT record FROM group_versions WHERE group_name = $1 AND version = $2", stored.Group, int64(stored.FromVersion)).Scan(&raw); err != nil { //nolint:gosec // versions are far below 2^63
			return fmt.Errorf("version %d of group %s: %w", stored.FromVersion, stored.Group, err)
		}
		var from store.Group
		if err := decodeRecord(raw, &from, "group version"); err != nil {
			return err
		}
		now := s.stamp()
		ro := *next
		g, err = endRollout(ctx, tx, stored.Group, func(g *store.Group) error {
			g.Data = maps.Clone(from.Data)
			if err := check(g); err != nil {
				return &fnError{err}
			}
			g.Version++
			g.VersionAt = now
			ro.AbortVersion = g.Version
			return nil
		})
		if err != nil {
			return err
		}
		ro.State, ro.Reason, ro.Rev, ro.UpdatedAt = coreapi.RolloutAborted, reason, stored.Rev+1, now
		if err := saveRollout(ctx, tx, &ro); err != nil {
			return err
		}
		out = &ro
		return audit(ctx, tx, store.Event{At: now, Actor: actor, Subject: "group/" + ro.Group, Action: "rollout abort",
			Detail: store.RolloutDetail(&ro, map[string]string{"reason": reason, "version": fmt.Sprint(ro.AbortVersion)}, 0)})
	})
	if err != nil {
		return nil, nil, err
	}
	return out, g, nil
}

// Rollout reads a rollout; ErrNotFound.
func (s *Store) Rollout(id uint64) (*store.Rollout, error) {
	var raw []byte
	err := s.pool.QueryRow(context.Background(), "SELECT record FROM rollouts WHERE id = $1", int64(id)).Scan(&raw) //nolint:gosec // IDs are far below 2^63
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("rollout %d: %w", id, store.ErrNotFound)
	} else if err != nil {
		return nil, classify(err)
	}
	ro := &store.Rollout{}
	return ro, decodeRecord(raw, ro, fmt.Sprintf("rollout %d", id))
}

// Rollouts are a group's rollouts ("": every group's), newest first.
func (s *Store) Rollouts(group string, active bool) ([]store.Rollout, error) {
	rows, err := s.pool.Query(context.Background(), "SELECT id, record FROM rollouts WHERE ($1 = '' OR group_name = $1) AND (active OR NOT $2) ORDER BY id DESC", group, active)
	if err != nil {
		return nil, classify(err)
	}
	defer rows.Close()
	var out []store.Rollout
	for rows.Next() {
		var id int64
		var raw []byte
		if err := rows.Scan(&id, &raw); err != nil {
			return nil, classify(err)
		}
		var ro store.Rollout
		if err := decodeRecord(raw, &ro, fmt.Sprintf("rollout %d", id)); err != nil {
			return nil, err
		}
		out = append(out, ro)
	}
	return out, classify0(rows.Err())
}

// HeldMembers calls fn with each member of a group a rollout holds.
func (s *Store) HeldMembers(group string, fn func(serial string) error) error {
	rows, err := s.pool.Query(context.Background(), "SELECT serial FROM devices WHERE group_name = $1 AND held_at IS NOT NULL ORDER BY serial", group)
	if err != nil {
		return classify(err)
	}
	serials, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return classify(err)
	}
	for _, serial := range serials {
		if err := fn(serial); err != nil {
			return err
		}
	}
	return nil
}
