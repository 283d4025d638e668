package pgtest_test

import (
	"context"
	"os"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/fleetprov/prov/internal/testenv/pgtest"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

func migrate(ctx context.Context, connString string) error {
	conn, err := pgx.Connect(ctx, connString)
	if err != nil {
		return err
	}
	defer func() { _ = conn.Close(ctx) }()
	_, err = conn.Exec(ctx, "CREATE TABLE things (name text PRIMARY KEY)")
	return err
}

// Each test gets its own database cloned from the migrated template: what
// one writes, the other does not see.
func TestDatabasesAreClonedAndSeparate(t *testing.T) {
	a := pgtest.New(t, "things-v1", migrate)
	b := pgtest.New(t, "things-v1", migrate)
	if a == b {
		t.Fatalf("one database twice: %s", a)
	}
	ctx := t.Context()
	ca, err := pgx.Connect(ctx, a)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = ca.Close(ctx) }()
	if _, err := ca.Exec(ctx, "INSERT INTO things VALUES ('x')"); err != nil {
		t.Fatal(err)
	}
	cb, err := pgx.Connect(ctx, b)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cb.Close(ctx) }()
	var n int
	if err := cb.QueryRow(ctx, "SELECT count(*) FROM things").Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 0 {
		t.Fatalf("the second database sees %d rows of the first", n)
	}
	var version string
	if err := cb.QueryRow(ctx, "SHOW server_version_num").Scan(&version); err != nil || version[:2] != "15" {
		t.Fatalf("server version %q %v", version, err)
	}
}

// Stop cuts every connection as a crash would; Start brings the cluster
// back with what was committed; Empty is a database with no table.
func TestStopAndStart(t *testing.T) {
	url := pgtest.New(t, "things-v1", migrate)
	ctx := t.Context()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = conn.Close(context.Background()) }()
	if _, err := conn.Exec(ctx, "INSERT INTO things VALUES ('kept')"); err != nil {
		t.Fatal(err)
	}
	pgtest.Stop(t)
	if _, err := conn.Exec(ctx, "SELECT 1"); err == nil {
		t.Fatal("a connection still answers with the cluster stopped")
	}
	if c, err := pgx.Connect(ctx, url); err == nil {
		_ = c.Close(ctx)
		t.Fatal("a new connection with the cluster stopped")
	}
	pgtest.Start(t)
	again, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = again.Close(context.Background()) }()
	var name string
	if err := again.QueryRow(ctx, "SELECT name FROM things").Scan(&name); err != nil || name != "kept" {
		t.Fatalf("after the restart: %q %v", name, err)
	}
	empty, err := pgx.Connect(ctx, pgtest.Empty(t))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = empty.Close(context.Background()) }()
	var tables int
	if err := empty.QueryRow(ctx, "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'").Scan(&tables); err != nil || tables != 0 {
		t.Fatalf("an empty database has %d tables (%v)", tables, err)
	}
}
