package deployment

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/smallstep/certificates/db"

	"github.com/fleetprov/prov/pki/ca"
)

// dbBolt is the embedded default type of step-ca's database: one bbolt
// file in ca/db, which one step-ca at a time holds open (the other:
// ca.DBPostgreSQL, init's --db).
const dbBolt = "bbolt"

// validateDatabaseURL checks init's --db: a postgres:// (or postgresql://)
// URL naming a database. Its errors never repeat the URL, which may hold
// a password; the caller prints it only through redactedURL.
func validateDatabaseURL(raw string) error {
	u, err := url.Parse(raw)
	if err != nil {
		// url.Error holds the whole URL, password and all: not wrapped.
		return errors.New("--db: not a URL; want postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE[?sslmode=…]")
	}
	if u.Scheme != "postgres" && u.Scheme != "postgresql" {
		return fmt.Errorf("--db: scheme %q: want postgres:// (step-ca's databases other than its embedded default: PostgreSQL)", u.Scheme)
	}
	if u.Host == "" && u.Query().Get("host") == "" {
		return fmt.Errorf("--db: %s names no host (HOST[:PORT], or ?host=/socket/dir for a unix socket)", redactedURL(u))
	}
	if name := u.Path; name == "" || name == "/" {
		return fmt.Errorf("--db: %s names no database (postgres://…/DATABASE): name the database the step-ca instances share", redactedURL(u))
	}
	return nil
}

// redactedURL is u with its password, if any, replaced by xxxxx: the form
// of a database URL that may be printed or logged.
func redactedURL(u *url.URL) string { return u.Redacted() }

// RedactedDatabase is a database URL safe to print: its password
// replaced, or a placeholder when it does not parse (a parse error would
// repeat it whole).
func RedactedDatabase(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(a database URL that does not parse)"
	}
	return redactedURL(u)
}

// caDatabase is the db block of step-ca's configuration: bbolt in ca/db,
// or the PostgreSQL database of --db.
func (b *builder) caDatabase() *db.Config {
	if b.opts.DB == "" {
		return &db.Config{Type: dbBolt, DataSource: b.l.CADatabase()}
	}
	return &db.Config{Type: ca.DBPostgreSQL, DataSource: b.opts.DB}
}

// invalidCatalogName is PostgreSQL's error code for a database that does
// not exist.
const invalidCatalogName = "3D000"

// dbCheckTimeout bounds init's look at the database before it writes.
const dbCheckTimeout = 30 * time.Second

// checkFreshDatabase refuses a database that cannot be reached or already
// holds a step-ca's tables: a new PKI there would share the old one's used
// tokens, revocations and last CRL (signed by another intermediate). It
// runs before init writes anything. The database itself may be missing
// (step-ca creates it), so only a connection to an existing one is read.
func checkFreshDatabase(ctx context.Context, raw string) error {
	ctx, cancel := context.WithTimeout(ctx, dbCheckTimeout)
	defer cancel()
	cfg, err := pgx.ParseConfig(raw) // its errors redact the password
	if err != nil {
		return fmt.Errorf("--db: %w", err)
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == invalidCatalogName {
		return nil // no such database yet: step-ca makes it
	}
	if err != nil {
		// pgx's connection errors name the user and database, never the
		// password.
		return fmt.Errorf("--db: cannot connect to %s: %w", RedactedDatabase(raw), err)
	}
	defer func() { _ = conn.Close(context.Background()) }()
	var exists bool
	if err := conn.QueryRow(ctx, "SELECT to_regclass('x509_certs') IS NOT NULL").Scan(&exists); err != nil {
		return fmt.Errorf("--db: %s: %w", RedactedDatabase(raw), err)
	}
	if exists {
		return fmt.Errorf("--db: %s %w: it holds a step-ca's tables (x509_certs); a new PKI needs a new database", RedactedDatabase(raw), ErrExists)
	}
	return nil
}
