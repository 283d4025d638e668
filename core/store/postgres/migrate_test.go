package postgres_test

import (
	"context"
	"errors"
	"os"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/fleetprov/prov/core/store"
	"github.com/fleetprov/prov/core/store/postgres"
	"github.com/fleetprov/prov/internal/testenv/pgtest"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

// Open migrates an empty database; opening it again migrates nothing; a
// database a newer core migrated is refused, not misread.
func TestOpenMigratesAndRefusesANewerSchema(t *testing.T) {
	conn := pgtest.New(t, "empty", func(context.Context, string) error { return nil })
	ctx := t.Context()
	for range 2 {
		s, err := postgres.Open(ctx, conn, postgres.Options{})
		if err != nil {
			t.Fatal(err)
		}
		_ = s.Close()
	}
	c, err := pgx.Connect(ctx, conn)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = c.Close(ctx) }()
	var v int
	if err := c.QueryRow(ctx, "SELECT version FROM schema_version").Scan(&v); err != nil || v != postgres.SchemaVersion() || v < 1 {
		t.Fatalf("schema version %d %v; want %d", v, err, postgres.SchemaVersion())
	}
	if _, err := c.Exec(ctx, "UPDATE schema_version SET version = version + 1"); err != nil {
		t.Fatal(err)
	}
	if _, err := postgres.Open(ctx, conn, postgres.Options{}); !errors.Is(err, store.ErrNewerSchema) {
		t.Fatalf("open a newer schema: %v", err)
	}
}
