package postgres

import (
	"context"
	"errors"
	"fmt"
	"maps"

	"github.com/jackc/pgx/v5"

	"github.com/fleetprov/prov/core/store"
)

// EnsureGroup creates a group unless it exists: one INSERT … ON CONFLICT
// DO NOTHING, so two cores starting together create it once.
func (s *Store) EnsureGroup(name string, data map[string]string, actor string) (g *store.Group, created bool, err error) {
	err = s.write("ensure group", func(ctx context.Context, tx pgx.Tx) error {
		now := s.stamp()
		g = &store.Group{Name: name, Data: maps.Clone(data), VersionAt: now, CreatedAt: now}
		raw, err := store.EncodeRecord(g)
		if err != nil {
			return err
		}
		tag, err := tx.Exec(ctx, "INSERT INTO groups (name, version, record) VALUES ($1, 0, $2) ON CONFLICT (name) DO NOTHING", name, raw)
		if err != nil {
			return err
		}
		if tag.RowsAffected() == 0 {
			g, err = group(ctx, tx, name, false)
			return err
		}
		created = true
		return audit(ctx, tx, store.Event{At: now, Actor: actor, Subject: "group/" + name, Action: "create", Detail: store.Change{Set: data}.Detail()})
	})
	return g, created, err
}

// group reads a group, locked for update if lock.
func group(ctx context.Context, q querier, name string, lock bool) (*store.Group, error) {
	sql := "SELECT record FROM groups WHERE name = $1"
	if lock {
		sql += " FOR UPDATE"
	}
	var raw []byte
	if err := q.QueryRow(ctx, sql, name).Scan(&raw); errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("group %s: %w", name, store.ErrNotFound)
	} else if err != nil {
		return nil, err
	}
	g := &store.Group{}
	return g, decodeRecord(raw, g, "group "+name)
}

// Group returns a group.
func (s *Store) Group(name string) (*store.Group, error) {
	g, err := group(context.Background(), s.pool, name, false)
	if err != nil {
		return nil, classify(err)
	}
	return g, nil
}

// GroupMembers calls fn with the serial of each device of a group, in
// serial order.
func (s *Store) GroupMembers(name string, fn func(serial string) error) error {
	ctx := context.Background()
	rows, err := s.pool.Query(ctx, "SELECT serial FROM devices WHERE group_name = $1 ORDER BY serial", name)
	if err != nil {
		return classify(err)
	}
	defer rows.Close()
	for rows.Next() {
		var serial string
		if err := rows.Scan(&serial); err != nil {
			return classify(err)
		}
		if err := fn(serial); err != nil {
			return err
		}
	}
	return classify0(rows.Err())
}

func classify0(err error) error {
	if err == nil {
		return nil
	}
	return classify(err)
}

// SetGroupData changes a group's data if its version is still ifVersion:
// the UPDATE carries the version it read.
func (s *Store) SetGroupData(name string, ifVersion uint64, c store.Change, actor string, check func(*store.Group) error) (*store.Group, error) {
	var g *store.Group
	err := s.write("set group data", func(ctx context.Context, tx pgx.Tx) error {
		var err error
		if g, err = group(ctx, tx, name, true); errors.Is(err, store.ErrNotFound) {
			return fmt.Errorf("%w %q", store.ErrUnknownGroup, name)
		} else if err != nil {
			return err
		}
		if g.Rollout != 0 {
			return fmt.Errorf("group %s: rollout %d: %w", name, g.Rollout, store.ErrRolloutActive)
		}
		if g.Version != ifVersion {
			return fmt.Errorf("group %s is at version %d, not %d: %w", name, g.Version, ifVersion, store.ErrConflict)
		}
		// A plain change moves every member to it, held ones too.
		if _, err := tx.Exec(ctx, "UPDATE devices SET held_at = NULL WHERE group_name = $1 AND held_at IS NOT NULL", name); err != nil {
			return err
		}
		g.Data = c.Apply(g.Data)
		if err := check(g); err != nil {
			return &fnError{err}
		}
		now := s.stamp()
		g.Version++
		g.VersionAt = now
		raw, err := store.EncodeRecord(g)
		if err != nil {
			return err
		}
		tag, err := tx.Exec(ctx, "UPDATE groups SET record = $2, version = $3 WHERE name = $1 AND version = $4", name, raw, int64(g.Version), int64(ifVersion)) //nolint:gosec // versions are far below 2^63
		if err != nil {
			return err
		}
		if tag.RowsAffected() != 1 {
			return fmt.Errorf("group %s changed meanwhile: %w", name, store.ErrConflict)
		}
		if err := enqueueShared(ctx, tx, "group", name); err != nil {
			return err
		}
		return audit(ctx, tx, store.Event{At: now, Actor: actor, Subject: "group/" + name, Action: "set data", Detail: c.Detail()})
	})
	if err != nil {
		return nil, err
	}
	return g, nil
}
