package cli_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/fleetprov/prov/internal/testenv/pgtest"
	"github.com/fleetprov/prov/pki/cli"
)

// secretPW is a database password that must appear in no output.
const secretPW = "s3cret-db-pw"

// init --db refuses a URL that is not a PostgreSQL database's with an
// error naming --db, and never repeats the URL's password, not even when
// the database cannot be reached; it leaves no PKI behind.
func TestInitRefusesBadDatabaseURLs(t *testing.T) {
	pwFile := passwordFile(t, testPassword)
	for _, tc := range []struct{ name, db, want string }{
		{"not a URL", "postgres://u:" + secretPW + "@host:port/db", "--db: not a URL"},
		{"another scheme", "mysql://u:" + secretPW + "@db.example/ca", `--db: scheme "mysql"`},
		{"a plain path", "/var/lib/step-ca/db", `--db: scheme ""`},
		{"no host", "postgres://u:" + secretPW + "@/ca", "names no host"},
		{"no database", "postgres://u:" + secretPW + "@db.example:5432", "names no database"},
		{"unreachable", "postgres://u:" + secretPW + "@/ca?host=" + url.QueryEscape(filepath.Join(t.TempDir(), "no-socket")) + "&connect_timeout=5", "--db: cannot connect to postgres://u:xxxxx@"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "pki")
			code, stdout, stderr := run(t, initArgs(dir, pwFile, "--db", tc.db)...)
			if code != cli.ExitError || !strings.Contains(stderr, tc.want) {
				t.Fatalf("exit %d, want %d; stderr does not name %q:\n%s", code, cli.ExitError, tc.want, stderr)
			}
			if strings.Contains(stdout+stderr, secretPW) {
				t.Fatalf("the database password was printed:\n%s%s", stdout, stderr)
			}
			if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("a refused init left %s (%v)", dir, err)
			}
		})
	}
}

// init --db postgres://… writes step-ca's db block for PostgreSQL (the
// password in ca.json, 0600, and nowhere in the output), makes no bbolt
// file, and issues the first identities into that database.
func TestInitOnPostgreSQL(t *testing.T) {
	u, err := url.Parse(pgtest.New(t, "step-ca-empty", func(context.Context, string) error { return nil }))
	if err != nil {
		t.Fatal(err)
	}
	// The test cluster trusts local connections: the password is carried,
	// never checked, which is all this test needs of it.
	u.User = url.UserPassword(u.User.Username(), secretPW)
	dir, _ := initPKIOut(t, u.String())
	raw, err := os.ReadFile(filepath.Join(dir, "ca", "ca.json"))
	if err != nil {
		t.Fatal(err)
	}
	var cfg struct {
		DB struct {
			Type       string `json:"type"`
			DataSource string `json:"dataSource"`
		} `json:"db"`
	}
	if err := json.Unmarshal(raw, &cfg); err != nil {
		t.Fatal(err)
	}
	if cfg.DB.Type != "postgresql" || cfg.DB.DataSource != u.String() {
		t.Fatalf("ca.json's db is %+v, want postgresql on %s", cfg.DB, u.Redacted())
	}
	if _, err := os.Stat(filepath.Join(dir, "ca", "db")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("init on PostgreSQL made ca/db (%v)", err)
	}

	// A second PKI in the same database would share the first's used
	// tokens, revocations and CRL: refused before anything is written.
	again := filepath.Join(t.TempDir(), "pki")
	code, stdout, stderr := run(t, initArgs(again, passwordFile(t, testPassword), "--db", u.String())...)
	if code != cli.ExitError || !strings.Contains(stderr, "already exists: it holds a step-ca's tables") || strings.Contains(stdout+stderr, secretPW) {
		t.Fatalf("init into a database that holds a step-ca: exit %d\n%s%s", code, stdout, stderr)
	}
	if _, err := os.Stat(again); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a refused init left %s (%v)", again, err)
	}

	// A database that does not exist yet is step-ca's to create.
	fresh := *u
	fresh.Path = "/stepca_not_yet"
	initPKIOut(t, fresh.String())
}

func initPKIOut(t *testing.T, db string) (dir, stdout string) {
	t.Helper()
	dir = filepath.Join(t.TempDir(), "pki")
	code, stdout, stderr := run(t, initArgs(dir, passwordFile(t, testPassword), "--db", db)...)
	if strings.Contains(stdout+stderr, secretPW) {
		t.Fatalf("the database password was printed:\n%s%s", stdout, stderr)
	}
	if code != cli.ExitOK {
		t.Fatalf("init --db: exit %d\n%s%s", code, stdout, stderr)
	}
	if !strings.Contains(stdout, "PostgreSQL postgres://postgres:xxxxx@") {
		t.Errorf("init does not name its database, redacted:\n%s", stdout)
	}
	return dir, stdout
}
