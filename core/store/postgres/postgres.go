// Package postgres is the registry's engine on PostgreSQL (store.Store on
// pgx and pgxpool): one database that several cores can share. Every
// uniqueness rule is a constraint (a serial and a hardware ID each belong
// to one device), every idempotent write one INSERT … ON CONFLICT, and
// every data change carries its If-Match in its UPDATE … WHERE version;
// a change of a device runs in one transaction that holds the device's
// row, so concurrent changes of one device apply one after the other and
// none is lost. Records are the store's compact encoding
// (store.EncodeRecord).
//
// Linked by prov-core only; the proxy and the device never link pgx.
package postgres

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/fleetprov/prov/core/store"
)

// Options of Open.
type Options struct {
	// Now is the clock; nil means time.Now. A test seam.
	Now func() time.Time
	// BeforeCommit, if set, runs inside every write transaction after its
	// writes; an error rolls it back as a failing database would. A test
	// seam for fault injection.
	BeforeCommit func(op string) error
	// PruneBatch bounds the events one transaction of an audit prune
	// removes; zero means store.PruneBatch. A test seam.
	PruneBatch int
	// SingleCore: this core must be the only one on the database;
	// otherwise it shares it with other cores, none single (ErrNotAlone).
	SingleCore bool
	// NotACore: opened by a command (store migrate, verify), not by a
	// core that serves: it takes no part in the cores' lock.
	NotACore bool
}

// DefaultConnectTimeout bounds a new connection when the URL sets no
// connect_timeout.
const DefaultConnectTimeout = 5 * time.Second

// Store is the registry on PostgreSQL.
type Store struct {
	pool     *pgxpool.Pool
	now      func() time.Time
	before   func(op string) error
	lockConn *pgx.Conn // holds the cores' lock
	pruneMax int
}

var _ store.Store = (*Store)(nil)

// Open connects to the database at connString and migrates it to this
// core's schema (store.ErrNewerSchema if a newer core migrated it).
func Open(ctx context.Context, connString string, opts Options) (*Store, error) {
	cfg, err := pgxpool.ParseConfig(connString)
	if err != nil {
		return nil, fmt.Errorf("store: %w", err) // pgconn's message shows the URL without its password
	}
	if !strings.Contains(connString, "pool_max_conns") {
		// pgxpool's default (one per CPU, at least 4) leaves requests
		// waiting while the change worker's claimers, one per CPU, each
		// hold a connection for a job's transaction.
		cfg.MaxConns = max(cfg.MaxConns, int32(3*runtime.GOMAXPROCS(0))) //nolint:gosec // a CPU count
	}
	if cfg.ConnConfig.ConnectTimeout == 0 {
		// libpq waits for ever by default; a request, and /readyz, would
		// hang as long on a database host that went away without a word.
		cfg.ConnConfig.ConnectTimeout = DefaultConnectTimeout
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	if err := migrate(ctx, pool); err != nil {
		pool.Close()
		return nil, fmt.Errorf("store: migrate: %w", classify(err))
	}
	s := &Store{pool: pool, now: opts.Now, before: opts.BeforeCommit, pruneMax: cmp.Or(opts.PruneBatch, store.PruneBatch)}
	if s.now == nil {
		s.now = time.Now
	}
	if opts.NotACore {
		return s, nil
	}
	if err := s.holdCoresLock(ctx, opts.SingleCore); err != nil {
		pool.Close()
		return nil, fmt.Errorf("store: %w", classify(err))
	}
	return s, nil
}

var _ store.Pinger = (*Store)(nil)

// Ping checks that the database answers within ctx: a connection of the
// pool (a new one if the old ones died with the server) runs an empty
// statement.
func (s *Store) Ping(ctx context.Context) error {
	if err := s.pool.Ping(ctx); err != nil {
		return fmt.Errorf("%w: the database does not answer: %w", store.ErrUnavailable, err)
	}
	return nil
}

// Close closes the pool and lets the cores' lock go.
func (s *Store) Close() error {
	if s.lockConn != nil {
		_ = s.lockConn.Close(context.Background()) //nolint:errcheck // closing; the server drops the lock either way
	}
	s.pool.Close()
	return nil
}

func (s *Store) stamp() time.Time { return s.now().UTC().Truncate(time.Second) }

// errFromFn marks an error of our own function, returned as it is.
type fnError struct{ err error }

func (e *fnError) Error() string { return e.err.Error() }
func (e *fnError) Unwrap() error { return e.err }

// classify: a sentinel of the store is returned as it is; anything else
// came from the database or the connection, and is ErrUnavailable.
func classify(err error) error {
	for _, known := range []error{store.ErrNotFound, store.ErrCollision, store.ErrConflict, store.ErrUnknownGroup,
		store.ErrRevoked, store.ErrNewerSchema, store.ErrUnavailable, ErrNotAlone, store.ErrRolloutActive, store.ErrRolloutOver} {
		if errors.Is(err, known) {
			return err
		}
	}
	var fe *fnError
	if errors.As(err, &fe) {
		return fe.err
	}
	return fmt.Errorf("%w: %w", store.ErrUnavailable, err)
}

// write runs fn in a transaction with the fault-injection seam.
func (s *Store) write(op string, fn func(ctx context.Context, tx pgx.Tx) error) error {
	ctx := context.Background()
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if err := fn(ctx, tx); err != nil {
			return err
		}
		if s.before != nil {
			if err := s.before(op); err != nil {
				return fmt.Errorf("%w: %w", store.ErrUnavailable, err)
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("%s: %w", op, classify(err))
	}
	return nil
}

// querier is a pool or a transaction.
type querier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
}

func decodeRecord(raw []byte, v any, what string) error {
	if err := store.DecodeRecord(raw, v); err != nil {
		return fmt.Errorf("%w: record %s is corrupt: %w", store.ErrUnavailable, what, err)
	}
	return nil
}

// audit writes an event to its subject's trail.
func audit(ctx context.Context, tx pgx.Tx, e store.Event) error {
	subject := e.Subject
	e.Seq, e.Subject = 0, "" // in the columns
	raw, err := store.EncodeRecord(e)
	if err != nil {
		return err
	}
	_, err = tx.Exec(ctx, "INSERT INTO audit (subject, event) VALUES ($1, $2)", subject, raw)
	return err
}

// Audit returns up to limit events of a subject after sequence number
// after, oldest first.
func (s *Store) Audit(subject string, after uint64, limit int) ([]store.Event, error) {
	ctx := context.Background()
	rows, err := s.pool.Query(ctx, "SELECT seq, event FROM audit WHERE subject = $1 AND seq > $2 ORDER BY seq LIMIT $3", subject, int64(after), limit) //nolint:gosec // sequence numbers are far below 2^63
	if err != nil {
		return nil, classify(err)
	}
	var out []store.Event
	for rows.Next() {
		var seq int64
		var raw []byte
		if err := rows.Scan(&seq, &raw); err != nil {
			return nil, classify(err)
		}
		var e store.Event
		if err := decodeRecord(raw, &e, fmt.Sprintf("audit %d", seq)); err != nil {
			return nil, err
		}
		e.Seq, e.Subject = uint64(seq), subject //nolint:gosec // identity values are positive
		out = append(out, e)
	}
	if err := rows.Err(); err != nil {
		return nil, classify(err)
	}
	return out, nil
}

// AppendAudit writes an event that changes no record.
func (s *Store) AppendAudit(e store.Event) error {
	return s.write(e.Action, func(ctx context.Context, tx pgx.Tx) error { return audit(ctx, tx, e) })
}
