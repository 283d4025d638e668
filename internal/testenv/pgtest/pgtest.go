// Package pgtest gives tests a real PostgreSQL 15: one private cluster per
// test binary, started on first use by initdb and pg_ctl (as the postgres
// user through runuser when the tests run as root, since initdb refuses
// root), listening on a unix socket in a temporary directory and on no TCP
// port at all; and one database per test, cloned from a template the
// caller's migration made once (CREATE DATABASE … TEMPLATE), dropped when
// the test ends. Without PostgreSQL the test is skipped with a message
// (a failure under PROV_REQUIRE_ALL=1, internal/testenv).
//
// A package that uses it stops the cluster in its TestMain:
//
//	func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }
//
// or, with another helper's Main, os.Exit(pgtest.After(catest.Main(m))).
package pgtest

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/fleetprov/prov/internal/testenv"
)

// BinDir is where Debian's postgresql-15 package puts initdb and pg_ctl.
const BinDir = "/usr/lib/postgresql/15/bin"

// installHint says how to get PostgreSQL where it is missing.
const installHint = "install Debian's postgresql package (apt-get install postgresql; .ci/run does)"

// Migrate prepares an empty database (the template) given its connection
// string.
type Migrate func(ctx context.Context, connString string) error

// cluster is the test binary's PostgreSQL.
type cluster struct {
	dir     string // data, socket and log
	runAs   []string
	admin   string // connection string of the postgres database
	started bool
}

var (
	once    sync.Once
	shared  *cluster
	initErr error

	templatesMu sync.Mutex
	templates   = map[string]string{} // key -> template database
	databases   atomic.Int64
)

// Main runs the tests and stops the cluster if one was started.
func Main(m *testing.M) int {
	return After(m.Run())
}

// After stops the cluster if one was started and returns the test
// binary's exit code, failed if the cluster would not stop: for a
// TestMain that runs the tests through another helper's Main.
func After(code int) int {
	if shared != nil {
		if err := shared.stop(); err != nil {
			fmt.Fprintf(os.Stderr, "pgtest: %v\n", err)
			if code == 0 {
				code = 1
			}
		}
	}
	return code
}

// New returns the connection string of a new, empty database for this
// test, made from a template that migrate prepared; templates are keyed
// by key (a schema version, say), each made once per test binary.
func New(t testing.TB, key string, migrate Migrate) string {
	t.Helper()
	startShared(t)
	tmpl, err := shared.template(t.Context(), key, migrate)
	if err != nil {
		t.Fatalf("pgtest: template %s: %v", key, err)
	}
	return newDatabase(t, tmpl)
}

// Empty returns the connection string of a new database with nothing in
// it (made from template0), for a test that fills it itself (a restore
// with pg_restore, say); dropped when the test ends.
func Empty(t testing.TB) string {
	t.Helper()
	startShared(t)
	return newDatabase(t, "template0")
}

// startShared starts the test binary's cluster if no test did yet.
func startShared(t testing.TB) {
	t.Helper()
	if _, err := os.Stat(filepath.Join(BinDir, "initdb")); err != nil {
		testenv.Missing(t, "PostgreSQL 15 not found (%s/initdb); %s", BinDir, installHint)
	}
	once.Do(func() { shared, initErr = startCluster() })
	if initErr != nil {
		t.Fatalf("pgtest: %v", initErr)
	}
}

// newDatabase makes a database of the test from template tmpl.
func newDatabase(t testing.TB, tmpl string) string {
	t.Helper()
	ctx := t.Context()
	name := fmt.Sprintf("test_%d", databases.Add(1))
	if err := shared.exec(ctx, fmt.Sprintf("CREATE DATABASE %s TEMPLATE %s", name, tmpl)); err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	t.Cleanup(func() {
		// FORCE: a test that failed may have left connections open.
		if err := shared.exec(context.Background(), fmt.Sprintf("DROP DATABASE %s WITH (FORCE)", name)); err != nil {
			t.Errorf("pgtest: %v", err)
		}
	})
	return shared.connString(name)
}

func startCluster() (*cluster, error) {
	dir, err := os.MkdirTemp("", "prov-pgtest-")
	if err != nil {
		return nil, err
	}
	c := &cluster{dir: dir}
	if os.Geteuid() == 0 {
		// initdb refuses root: the cluster is the postgres user's, in a
		// directory it owns that everyone may enter (the socket is there).
		u, err := user.Lookup("postgres")
		if err != nil {
			return nil, fmt.Errorf("running as root needs the postgres user: %w", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		if err := os.Chown(dir, uid, gid); err != nil {
			return nil, err
		}
		c.runAs = []string{"runuser", "-u", "postgres", "--"}
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		return nil, err
	}
	// --no-sync and fsync=off: the tests crash processes, not machines, and
	// these make a cluster start in a second and a database in a few ms.
	if err := c.run("initdb", "-D", filepath.Join(dir, "data"), "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8", "--locale=C"); err != nil {
		return nil, err
	}
	if err := c.start(); err != nil {
		return nil, err
	}
	c.started = true
	c.admin = c.connString("postgres")
	// fsync off in postgresql.auto.conf, not on the command line (which
	// would win over it): Durable turns it on for a benchmark.
	if err := c.setFsync(context.Background(), false); err != nil {
		return nil, err
	}
	return c, nil
}

// start starts the server on the cluster's data.
func (c *cluster) start() error {
	// listen_addresses empty: a unix socket in dir and no TCP port, so no
	// port is picked and none can be taken by another test binary.
	opts := fmt.Sprintf("-k %s -c listen_addresses= -c max_connections=200", c.dir)
	if err := c.run("pg_ctl", "-D", filepath.Join(c.dir, "data"), "-l", filepath.Join(c.dir, "log"), "-o", opts, "-w", "-t", "60", "start"); err != nil {
		return fmt.Errorf("%w (log in %s)", err, filepath.Join(c.dir, "log"))
	}
	return nil
}

// down is whether a test stopped the cluster (Stop) and has not started
// it again.
var (
	downMu sync.Mutex
	down   bool
)

// Stop stops the test binary's cluster the way a crash would (pg_ctl stop
// -m immediate: every connection cut, no checkpoint), for a test of the
// database going away; Start starts it again with every database as it
// was. The cluster is shared by the tests of the binary: a test that stops
// it must not run in parallel with others (no t.Parallel in it or beside
// it), and if it ends without starting it, its cleanup does.
func Stop(t testing.TB) {
	t.Helper()
	if shared == nil {
		t.Fatal("pgtest.Stop: no cluster (pgtest.New first)")
	}
	downMu.Lock()
	defer downMu.Unlock()
	if down {
		t.Fatal("pgtest.Stop: already stopped")
	}
	if err := shared.run("pg_ctl", "-D", filepath.Join(shared.dir, "data"), "-m", "immediate", "-w", "stop"); err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	down = true
	t.Cleanup(func() {
		downMu.Lock()
		defer downMu.Unlock()
		if down {
			if err := shared.start(); err != nil {
				t.Errorf("pgtest: start again: %v", err)
			}
			down = false
		}
	})
}

// Start starts the cluster a test stopped (Stop) and returns once it
// accepts connections.
func Start(t testing.TB) {
	t.Helper()
	downMu.Lock()
	defer downMu.Unlock()
	if !down {
		t.Fatal("pgtest.Start: not stopped")
	}
	if err := shared.start(); err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	down = false
}

// run runs a PostgreSQL program as the cluster's owner.
func (c *cluster) run(prog string, args ...string) error {
	argv := append(append([]string{}, c.runAs...), filepath.Join(BinDir, prog))
	argv = append(argv, args...)
	out, err := exec.Command(argv[0], argv[1:]...).CombinedOutput() //nolint:gosec // our fixed programs and paths
	if err != nil {
		return fmt.Errorf("%s: %w: %s", prog, err, out)
	}
	return nil
}

func (c *cluster) stop() error {
	defer func() { _ = os.RemoveAll(c.dir) }()
	if !c.started {
		return nil
	}
	return c.run("pg_ctl", "-D", filepath.Join(c.dir, "data"), "-m", "fast", "-w", "stop")
}

// connString is a postgres:// URL, the form core's configuration takes:
// the socket's directory is the host query parameter.
func (c *cluster) connString(db string) string {
	u := url.URL{Scheme: "postgres", User: url.User("postgres"), Path: "/" + db,
		RawQuery: url.Values{"host": {c.dir}, "port": {"5432"}, "sslmode": {"disable"}}.Encode()}
	return u.String()
}

// exec runs one statement on the postgres database.
func (c *cluster) exec(ctx context.Context, sql string) error {
	conn, err := pgx.Connect(ctx, c.admin)
	if err != nil {
		return err
	}
	defer func() { _ = conn.Close(context.Background()) }()
	if _, err := conn.Exec(ctx, sql); err != nil {
		return fmt.Errorf("%s: %w", sql, err)
	}
	return nil
}

// template makes (once) and returns the template database of key.
func (c *cluster) template(ctx context.Context, key string, migrate Migrate) (string, error) {
	templatesMu.Lock()
	defer templatesMu.Unlock()
	if name, ok := templates[key]; ok {
		return name, nil
	}
	sum := sha256.Sum256([]byte(key))
	name := "template_" + hex.EncodeToString(sum[:8])
	if err := c.exec(ctx, "CREATE DATABASE "+name); err != nil {
		return "", err
	}
	if err := migrate(ctx, c.connString(name)); err != nil {
		return "", errors.Join(fmt.Errorf("migrate: %w", err), c.exec(context.Background(), "DROP DATABASE "+name))
	}
	templates[key] = name
	return name, nil
}

// Durable makes the cluster sync every commit to the disk, as a real
// one does, until tb ends: for benchmarks that compare the engines'
// costs (bbolt syncs every commit). The cluster is the test binary's, so
// tb must not run beside other tests.
func Durable(tb testing.TB) {
	tb.Helper()
	if shared == nil {
		tb.Fatal("pgtest: Durable before New")
	}
	if err := shared.setFsync(tb.Context(), true); err != nil {
		tb.Fatalf("pgtest: %v", err)
	}
	tb.Cleanup(func() {
		if err := shared.setFsync(context.Background(), false); err != nil {
			tb.Errorf("pgtest: %v", err)
		}
	})
}

// setFsync sets fsync in postgresql.auto.conf (kept across restarts) and
// reloads: not on the command line, which would win over it.
func (c *cluster) setFsync(ctx context.Context, on bool) error {
	v := "off"
	if on {
		v = "on"
	}
	if err := c.exec(ctx, "ALTER SYSTEM SET fsync = "+v); err != nil {
		return err
	}
	return c.exec(ctx, "SELECT pg_reload_conf()")
}
