package ca

import (
	"context"
	_ "embed" // the guard's SQL
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/smallstep/certificates/db"
)

// DBPostgreSQL is the type of step-ca's database on PostgreSQL
// (smallstep/nosql's PostgreSQLDriver), which several step-ca instances
// can share.
const DBPostgreSQL = "postgresql"

// ReplayGuardSQL installs, idempotently, a trigger on step-ca's used_ott
// table that refuses a second use of a one-time token across step-ca
// instances sharing one PostgreSQL database (the file says why step-ca
// needs it). docs/operations.md shows how to apply it by hand.
//
//go:embed replay_guard.sql
var ReplayGuardSQL string

// replayGuardTimeout bounds installing the guard at start.
const replayGuardTimeout = 30 * time.Second

// GuardTokenReplay installs the replay guard in step-ca's database when it
// is PostgreSQL; other databases (bbolt, one step-ca) need none. prov-pki
// init (through OpenAuthority) and prov-pki ca (NewServer) call it, so a
// database they have used is guarded for the step-ca binary too.
func GuardTokenReplay(ctx context.Context, c *db.Config) error {
	if c == nil || c.Type != DBPostgreSQL {
		return nil
	}
	cfg, err := pgx.ParseConfig(c.DataSource) // its errors redact the password
	if err != nil {
		return fmt.Errorf("step-ca's database: %w", err)
	}
	if c.Database != "" {
		cfg.Database = c.Database
	}
	ctx, cancel := context.WithTimeout(ctx, replayGuardTimeout)
	defer cancel()
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return fmt.Errorf("step-ca's database: install the token replay guard: %w", err)
	}
	defer func() { _ = conn.Close(context.Background()) }()
	// No arguments: the simple protocol, which runs the file's statements
	// (one transaction) as one query.
	if _, err := conn.Exec(ctx, ReplayGuardSQL); err != nil {
		return fmt.Errorf("step-ca's database %s: install the token replay guard: %w", cfg.Database, err)
	}
	return nil
}
