package deployment_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/fleetprov/prov/internal/testenv/pgtest"
	"github.com/fleetprov/prov/pki"
	"github.com/fleetprov/prov/pki/ca"
	"github.com/fleetprov/prov/pki/ca/catest"
	"github.com/fleetprov/prov/pki/deployment"
	"github.com/fleetprov/prov/pki/stepca"
)

// emptyDatabase is the template of step-ca's databases: step-ca makes its
// own tables (prov-pki init's in-process authority, the first time).
func emptyDatabase(context.Context, string) error { return nil }

// twoCAs makes a PKI whose step-ca database is a new PostgreSQL database
// (prov-pki init --db) and runs the real step-ca binary twice on it: the
// same ca.json and keys, each instance on its own port (ca.json asks for
// port 0, so each binds a free one).
func twoCAs(t *testing.T) (a, b *catest.CA) {
	t.Helper()
	bin := catest.Binary(t)
	dbURL := pgtest.New(t, "step-ca-empty", emptyDatabase)
	d := catest.NewPKI(t, func(o *deployment.InitOptions) { o.DB = dbURL })
	// A second view of the same directory: each CA's URL (its port) is
	// its own.
	d2, err := deployment.Open(d.Dir)
	if err != nil {
		t.Fatal(err)
	}
	a = catest.RunBinary(t, bin, d)
	b = catest.RunBinary(t, bin, d2)
	if a.CAURL == b.CAURL {
		t.Fatalf("both step-ca instances at %s", a.CAURL)
	}
	return a, b
}

// Two step-ca instances on one database share its state: a token used at
// one is used at the other, and a certificate revoked through one is
// refused for renewal by the other.
func TestTwoStepCAsShareOnePostgreSQL(t *testing.T) {
	a, b := twoCAs(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	key, csr := deviceCSR(t, nil)
	tok := proxyToken(t, a, serialA, csr)
	chain, err := a.Client.Sign(ctx, csr, tok)
	if err != nil {
		t.Fatalf("sign at the first step-ca: %v", err)
	}
	var refused *stepca.Error
	if _, err := b.Client.Sign(ctx, csr, tok); !errors.As(err, &refused) || refused.Status != http.StatusUnauthorized {
		t.Fatalf("the second step-ca took a token the first had used: %v", err)
	}

	renewer := renewClient(t, b, chain, key)
	renewed, err := renewer.Renew(ctx)
	if err != nil {
		t.Fatalf("renew at the second step-ca before the revocation: %v", err)
	}
	if renewed[0].SerialNumber.Cmp(chain[0].SerialNumber) == 0 {
		t.Fatal("renewal gave the same certificate")
	}

	a.Revoke(t, chain[0], "stolen")
	if _, err := renewer.Renew(ctx); !errors.As(err, &refused) || refused.Status != http.StatusUnauthorized {
		t.Fatalf("the second step-ca renewed a certificate revoked through the first: %v", err)
	}
	if revoked, listed := b.Revoked(t, chain[0]); !revoked {
		t.Fatalf("the second step-ca's CRL does not list the certificate revoked through the first (lists %v)", listed)
	}
}

// renewClient is a client of c that presents chain and key, as a device
// renewing its certificate does.
func renewClient(t *testing.T, c *catest.CA, chain []*x509.Certificate, key *ecdsa.PrivateKey) *stepca.Client {
	t.Helper()
	dir := t.TempDir()
	var certPEM []byte
	for _, crt := range chain {
		certPEM = append(certPEM, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: crt.Raw})...)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, certPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	kp, err := pki.LoadKeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	bundle, err := pki.LoadTrustBundle(c.RootCert())
	if err != nil {
		t.Fatal(err)
	}
	client, err := stepca.New(c.CAURL, bundle, stepca.WithClientCertificate(kp))
	if err != nil {
		t.Fatal(err)
	}
	return client
}

// replayRounds is how many one-time tokens each phase of the replay test
// sends to both step-ca instances at once. Unguarded, both signed in about
// a quarter to a half of the rounds here (43 and 54 of 200, 56 of 100),
// so a guard that let races through would all but surely show in 40
// (about 10 expected); and 40 keep make test's whole run short under the
// race detector. (A round is a device key, a token and two sign requests;
// the proxy's key is decrypted once per phase, not per round: that
// decryption was most of the 1.6 s a round took under the race detector.)
const replayRounds = 40

// replayRoundTimeout bounds one round (two sign requests).
const replayRoundTimeout = time.Minute

// replayCounts is what happened to the rounds of a replay.
type replayCounts struct {
	rounds, both, onlyA, onlyB, neither int
	// refusals counts the losers' answers by HTTP status (0: not an
	// answer of step-ca).
	refusals map[int]int
	// firstErr is the first error of a round in which neither signed.
	firstErr error
}

// replay sends each of rounds one-time tokens, minted as the proxy mints
// them (one device's serial, bound to its CSR), to a and b at the same
// moment, from two goroutines released together, and counts how often
// each signed.
func replay(t *testing.T, a, b *catest.CA, rounds int) replayCounts {
	t.Helper()
	got := replayCounts{rounds: rounds, refusals: map[int]int{}}
	// Loaded once, as a proxy does: each round's token is still new.
	p := proxyProvisioner(t, a)
	for range rounds {
		ctx, cancel := context.WithTimeout(context.Background(), replayRoundTimeout)
		_, csr := deviceCSR(t, nil)
		tok := proxyTokenWith(t, p, a, serialA, csr)
		var (
			errs          [2]error
			ready, done   sync.WaitGroup
			start         = make(chan struct{})
			clients       = [2]*stepca.Client{a.Client, b.Client}
			statusOf      = func(err error) int { var e *stepca.Error; _ = errors.As(err, &e); return statusOrZero(e) }
			signedA, sign bool
		)
		for i, c := range clients {
			ready.Add(1)
			done.Add(1)
			go func() {
				defer done.Done()
				ready.Done()
				<-start
				_, errs[i] = c.Sign(ctx, csr, tok)
			}()
		}
		ready.Wait()
		close(start)
		done.Wait()
		cancel()
		signedA, sign = errs[0] == nil, errs[1] == nil
		switch {
		case signedA && sign:
			got.both++
		case signedA:
			got.onlyA++
			got.refusals[statusOf(errs[1])]++
		case sign:
			got.onlyB++
			got.refusals[statusOf(errs[0])]++
		default:
			got.neither++
			if got.firstErr == nil {
				got.firstErr = errors.Join(errs[0], errs[1])
			}
		}
	}
	return got
}

func statusOrZero(e *stepca.Error) int {
	if e == nil {
		return 0
	}
	return e.Status
}

// One one-time token replayed at two step-ca instances on one database,
// at the same moment, many times. As step-ca ships, both sometimes sign
// (smallstep/nosql's compare-and-swap on PostgreSQL: both transactions
// find no row, both insert); with the guard prov-pki init installs
// (pki/ca/replay_guard.sql) exactly one signs every round. The unguarded
// rounds are reported, not asserted: how often both win is timing.
func TestTokenReplayAcrossTwoStepCAs(t *testing.T) {
	a, b := twoCAs(t)
	dbURL := caDatabase(t, a)

	guarded := replay(t, a, b, replayRounds)
	t.Logf("with prov's guard: %s", guarded)
	if guarded.both != 0 || guarded.neither != 0 {
		t.Errorf("with the guard init installs, every round must have exactly one certificate: %s (%v)", guarded, guarded.firstErr)
	}
	for status := range guarded.refusals {
		// 401: the loser saw the winner's row; 500: it met it on insert
		// and the guard refused (step-ca: "failed when attempting to
		// store token").
		if status != http.StatusUnauthorized && status != http.StatusInternalServerError {
			t.Errorf("a losing request answered %d, not a refusal of the token", status)
		}
	}

	execSQL(t, dbURL, "DROP TRIGGER prov_used_ott_once ON used_ott")
	unguarded := replay(t, a, b, replayRounds)
	t.Logf("as step-ca ships (guard dropped): %s", unguarded)
	if unguarded.neither != 0 {
		t.Errorf("rounds in which neither step-ca signed a fresh token: %s (%v)", unguarded, unguarded.firstErr)
	}
}

func (c replayCounts) String() string {
	return fmt.Sprintf("%d rounds: both signed %d, only the first %d, only the second %d, neither %d; the losers' answers by HTTP status %v",
		c.rounds, c.both, c.onlyA, c.onlyB, c.neither, c.refusals)
}

// caDatabase is the data source of c's step-ca database, from its ca.json.
func caDatabase(t *testing.T, c *catest.CA) string {
	t.Helper()
	cfg, err := ca.LoadConfig(c.CAConfig())
	if err != nil {
		t.Fatal(err)
	}
	if cfg.DB == nil || cfg.DB.Type != ca.DBPostgreSQL {
		t.Fatalf("ca.json's database is %+v, not PostgreSQL", cfg.DB)
	}
	return cfg.DB.DataSource
}

func execSQL(t *testing.T, dbURL, sql string) {
	t.Helper()
	conn, err := pgx.Connect(t.Context(), dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = conn.Close(context.Background()) }()
	if _, err := conn.Exec(t.Context(), sql); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// prov-pki ca (step-ca in this process) puts the replay guard back on a
// database that lacks it, at every start: a database restored without it,
// or guarded by hand after init, is guarded once prov-pki ca has run on it.
func TestCAStartGuardsTokenReplay(t *testing.T) {
	dbURL := pgtest.New(t, "step-ca-empty", emptyDatabase)
	d := catest.NewPKI(t, func(o *deployment.InitOptions) { o.DB = dbURL })
	if n := guards(t, dbURL); n != 1 {
		t.Fatalf("init left %d replay guards, want 1", n)
	}
	execSQL(t, dbURL, "DROP TRIGGER prov_used_ott_once ON used_ott")
	catest.Run(t, d)
	if n := guards(t, dbURL); n != 1 {
		t.Fatalf("after prov-pki ca started: %d replay guards, want 1", n)
	}
}

// guards counts the replay guard's triggers on used_ott.
func guards(t *testing.T, dbURL string) int {
	t.Helper()
	conn, err := pgx.Connect(t.Context(), dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = conn.Close(context.Background()) }()
	var n int
	if err := conn.QueryRow(t.Context(), "SELECT count(*) FROM pg_trigger WHERE tgname = 'prov_used_ott_once' AND tgrelid = 'used_ott'::regclass").Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}
