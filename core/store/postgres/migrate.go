package postgres

import (
	"context"
	"embed"
	"fmt"
	"io/fs"
	"path"
	"slices"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/fleetprov/prov/core/store"
)

// The schema is a numbered list of migrations, embedded, applied at start
// in one transaction under an advisory lock (replicas starting together
// migrate once), and recorded in schema_version. A database a newer core
// migrated is refused: this core would misread it.

//go:embed migrations/*.sql
var migrations embed.FS

// migrationLock is the advisory lock key of migrations ("prov" in ASCII).
const migrationLock = 0x70726f76

type migration struct {
	version int
	sql     string
}

// schema is every migration, in order.
func schema() ([]migration, error) {
	entries, err := fs.ReadDir(migrations, "migrations")
	if err != nil {
		return nil, err
	}
	var out []migration
	for _, e := range entries {
		num, _, ok := strings.Cut(e.Name(), "_")
		v, err := strconv.Atoi(num)
		if !ok || err != nil {
			return nil, fmt.Errorf("migration %s: name must start with its number", e.Name())
		}
		raw, err := migrations.ReadFile(path.Join("migrations", e.Name()))
		if err != nil {
			return nil, err
		}
		out = append(out, migration{version: v, sql: string(raw)})
	}
	slices.SortFunc(out, func(a, b migration) int { return a.version - b.version })
	for i, m := range out {
		if m.version != i+1 {
			return nil, fmt.Errorf("migration %d missing", i+1)
		}
	}
	return out, nil
}

// SchemaVersion is the schema this core writes.
func SchemaVersion() int {
	m, err := schema()
	if err != nil {
		return 0
	}
	return len(m)
}

// Migrate brings the database at connString to this core's schema.
func Migrate(ctx context.Context, connString string) error {
	pool, err := pgxpool.New(ctx, connString)
	if err != nil {
		return fmt.Errorf("%w: %w", store.ErrUnavailable, err)
	}
	defer pool.Close()
	return migrate(ctx, pool)
}

func migrate(ctx context.Context, pool *pgxpool.Pool) error {
	all, err := schema()
	if err != nil {
		return err
	}
	return pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", migrationLock); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, "CREATE TABLE IF NOT EXISTS schema_version (version integer NOT NULL)"); err != nil {
			return err
		}
		current := 0
		if err := tx.QueryRow(ctx, "SELECT coalesce(max(version), 0) FROM schema_version").Scan(&current); err != nil {
			return err
		}
		if current > len(all) {
			return fmt.Errorf("%w: the database is at schema %d, this core knows %d", store.ErrNewerSchema, current, len(all))
		}
		for _, m := range all[current:] {
			if _, err := tx.Exec(ctx, m.sql); err != nil {
				return fmt.Errorf("migration %d: %w", m.version, err)
			}
		}
		if _, err := tx.Exec(ctx, "DELETE FROM schema_version"); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, "INSERT INTO schema_version VALUES ($1)", len(all))
		return err
	})
}
