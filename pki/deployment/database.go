package deployment

import (
	"errors"
	"fmt"
	"net/url"

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
