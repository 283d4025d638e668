package store_test

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fleetprov/prov/core/contract/hwid"
	"github.com/fleetprov/prov/core/store"
	"github.com/fleetprov/prov/core/store/postgres"
	"github.com/fleetprov/prov/internal/testenv/pgtest"
)

// engine is one implementation of the store's contract. Every test of
// this file runs on each (forEngines), unchanged.
type engine struct {
	name string
	// open opens an empty store with the group "default", closed (and
	// checked, where the engine can) on cleanup.
	open func(t testing.TB, opts store.Options) store.Store
	// restart closes s and opens the same store again, as a new core
	// process would.
	restart func(t *testing.T, s store.Store) store.Store
}

var engines = []engine{
	{name: "bbolt", open: openBolt, restart: restartBolt},
	{name: "postgres", open: openPostgres, restart: restartPostgres},
}

// The PostgreSQL engine's tests share one private cluster (pgtest).
func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

// pgStore is the PostgreSQL engine with the database it is on.
type pgStore struct {
	*postgres.Store
	connString string
}

// openPostgres opens a store on a new database of the test cluster,
// cloned from one migrated to this core's schema.
func openPostgres(t testing.TB, opts store.Options) store.Store {
	t.Helper()
	conn := pgtest.New(t, fmt.Sprintf("registry-v%d", postgres.SchemaVersion()), postgres.Migrate)
	s := openPostgresAt(t, conn, postgres.Options{Now: opts.Now, BeforeCommit: opts.BeforeCommit, PruneBatch: opts.PruneBatch})
	ensureDefault(t, s)
	return s
}

func openPostgresAt(t testing.TB, conn string, opts postgres.Options) *pgStore {
	t.Helper()
	s, err := postgres.Open(t.Context(), conn, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return &pgStore{Store: s, connString: conn}
}

func restartPostgres(t *testing.T, s store.Store) store.Store {
	t.Helper()
	p, ok := s.(*pgStore)
	if !ok {
		t.Fatalf("restartPostgres of a %T", s)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	return openPostgresAt(t, p.connString, postgres.Options{})
}

// forEngines runs test on every engine.
func forEngines(t *testing.T, test func(t *testing.T, e engine)) {
	for _, e := range engines {
		t.Run(e.name, func(t *testing.T) { test(t, e) })
	}
}

// ensureDefault creates the group every test registers in.
func ensureDefault(t testing.TB, s store.Store) {
	t.Helper()
	if _, _, err := s.EnsureGroup("default", map[string]string{"/etc/prov/data/a": "1"}, "config"); err != nil {
		t.Fatal(err)
	}
}

// openBolt opens a store in a temporary directory and checks it on
// cleanup, as bbolt's own tests do.
func openBolt(t testing.TB, opts store.Options) store.Store {
	t.Helper()
	s := openBoltAt(t, filepath.Join(t.TempDir(), "registry.db"), opts)
	ensureDefault(t, s)
	return s
}

func openBoltAt(t testing.TB, path string, opts store.Options) *store.Bolt {
	t.Helper()
	s, err := store.Open(path, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if s.Path() == "" {
			return // closed by the test (restartBolt)
		}
		if err := s.Check(); err != nil {
			t.Errorf("consistency check: %v", err)
		}
		_ = s.Close()
	})
	return s
}

func restartBolt(t *testing.T, s store.Store) store.Store {
	t.Helper()
	b, ok := s.(*store.Bolt)
	if !ok {
		t.Fatalf("restartBolt of a %T", s)
	}
	path := b.Path()
	if err := b.Check(); err != nil {
		t.Errorf("consistency check: %v", err)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	return openBoltAt(t, path, store.Options{})
}

func id(t testing.TB, raw string) hwid.ID {
	t.Helper()
	i, err := hwid.Parse("rpi4", raw)
	if err != nil {
		t.Fatal(err)
	}
	return i
}

func reg(t testing.TB, raw string) store.Registration {
	return store.Registration{ID: id(t, raw), Group: "default", Actor: "spiffe://fleet.test/proxy/p1",
		Immutable: store.Immutable{Hostname: "h-" + raw[8:], MQTTClientID: "c", MQTTGroupID: "g"}}
}

func TestRegisterIsIdempotentAndFreezesImmutableData(t *testing.T) {
	forEngines(t, func(t *testing.T, e engine) {
		s := e.open(t, store.Options{})
		r := reg(t, "10000000abcdef12")
		v, created, err := s.Register(r)
		if err != nil || !created || v.Generation() != 1 || v.Status != store.Active {
			t.Fatalf("first: %+v %v %v", v, created, err)
		}
		// A later template would compute other values: the record keeps its own.
		r.Immutable.Hostname = "changed-template"
		again, created, err := s.Register(r)
		if err != nil || created || again.Immutable.Hostname != v.Immutable.Hostname || again.Serial != v.Serial {
			t.Fatalf("second: %+v %v %v", again, created, err)
		}
	})
}

func TestConcurrentRegistrationsOfOneID(t *testing.T) {
	forEngines(t, func(t *testing.T, e engine) {
		s := e.open(t, store.Options{})
		var created atomic.Int32
		var wg sync.WaitGroup
		serials := make(chan string, 100)
		for range 100 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				v, c, err := s.Register(reg(t, "10000000abcdef12"))
				if err != nil {
					t.Error(err)
					return
				}
				if c {
					created.Add(1)
				}
				serials <- v.Serial
			}()
		}
		wg.Wait()
		close(serials)
		first := ""
		for sn := range serials {
			if first == "" {
				first = sn
			}
			if sn != first {
				t.Fatalf("two serials for one hardware ID: %s %s", first, sn)
			}
		}
		list, _, err := s.List("", 1000)
		if err != nil {
			t.Fatal(err)
		}
		if created.Load() != 1 || len(list) != 1 {
			t.Fatalf("%d created, %d records; want 1 and 1", created.Load(), len(list))
		}
	})
}

// Two rpi4 hardware IDs whose serials collide (found by search; the rule
// is versioned, so they collide forever).
const collideA, collideB, collidingSerial = "0000000000070c6b", "000000000014d65c", "147c954e69"

func TestCollisionIsRefusedAndTheFirstDeviceUntouched(t *testing.T) {
	forEngines(t, func(t *testing.T, e engine) {
		s := e.open(t, store.Options{})
		a, b := reg(t, collideA), reg(t, collideB)
		if a.ID.Serial() != collidingSerial || b.ID.Serial() != collidingSerial {
			t.Fatalf("the pinned pair no longer collides: %s %s", a.ID.Serial(), b.ID.Serial())
		}
		first, _, err := s.Register(a)
		if err != nil {
			t.Fatal(err)
		}
		if _, _, err := s.Register(b); !errors.Is(err, store.ErrCollision) {
			t.Fatalf("second ID with the same serial: %v", err)
		}
		after, err := s.Device(collidingSerial)
		if err != nil || after.HardwareID != first.HardwareID || after.Version != first.Version {
			t.Fatalf("first device changed: %+v %v", after, err)
		}
		// The first device still registers idempotently.
		if _, created, err := s.Register(a); err != nil || created {
			t.Fatalf("re-register first: %v %v", created, err)
		}
	})
}

func TestUnknownGroup(t *testing.T) {
	forEngines(t, func(t *testing.T, e engine) {
		s := e.open(t, store.Options{})
		r := reg(t, "10000000abcdef12")
		r.Group = "nope"
		if _, _, err := s.Register(r); !errors.Is(err, store.ErrUnknownGroup) {
			t.Fatalf("Register: %v", err)
		}
	})
}

func TestMutableDataAndGenerations(t *testing.T) {
	forEngines(t, func(t *testing.T, e engine) {
		s := e.open(t, store.Options{})
		v, _, err := s.Register(reg(t, "10000000abcdef12"))
		if err != nil {
			t.Fatal(err)
		}
		ok := func(*store.View) error { return nil }
		// If-Match on the generation: a stale one conflicts.
		if _, err := s.SetDeviceData(v.Serial, 7, store.Change{Set: map[string]string{"/etc/prov/data/b": "2"}}, "admin", ok); !errors.Is(err, store.ErrConflict) {
			t.Fatalf("stale generation: %v", err)
		}
		v2, err := s.SetDeviceData(v.Serial, 1, store.Change{Set: map[string]string{"/etc/prov/data/b": "2"}}, "spiffe://fleet.test/admin/alice", ok)
		if err != nil || v2.Generation() != 2 {
			t.Fatalf("set: %+v %v", v2, err)
		}
		if d := v2.EffectiveData(); d["/etc/prov/data/a"] != "1" || d["/etc/prov/data/b"] != "2" {
			t.Fatalf("effective data %v", d)
		}
		// The check refuses: nothing changes.
		if _, err := s.SetDeviceData(v.Serial, 2, store.Change{Set: map[string]string{"x": "y"}}, "admin", func(*store.View) error { return errors.New("no") }); err == nil {
			t.Fatal("a refused check still changed data")
		}
		// A group change moves the device to a new generation.
		g, err := s.SetGroupData("default", 0, store.Change{Set: map[string]string{"/etc/prov/data/a": "one"}}, "admin", func(*store.Group) error { return nil })
		if err != nil || g.Version != 1 {
			t.Fatalf("group: %+v %v", g, err)
		}
		if _, err := s.SetGroupData("default", 0, store.Change{}, "admin", func(*store.Group) error { return nil }); !errors.Is(err, store.ErrConflict) {
			t.Fatalf("stale group version: %v", err)
		}
		v3, err := s.Device(v.Serial)
		if err != nil || v3.Generation() != 3 || v3.EffectiveData()["/etc/prov/data/a"] != "one" {
			t.Fatalf("after group change: gen %d data %v %v", v3.Generation(), v3.EffectiveData(), err)
		}
		// Reprovision: a new generation, the same data.
		v4, err := s.Reprovision(v.Serial, "admin")
		if err != nil || v4.Generation() != 4 {
			t.Fatalf("reprovision: %v %v", v4, err)
		}
		// Revoked: no more changes.
		if _, err := s.Revoke(v.Serial, "admin", "lost"); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Reprovision(v.Serial, "admin"); !errors.Is(err, store.ErrRevoked) {
			t.Fatalf("reprovision revoked: %v", err)
		}
		events, err := s.Audit("device/"+v.Serial, 0, 100)
		if err != nil {
			t.Fatal(err)
		}
		var actions []string
		for _, e := range events {
			actions = append(actions, e.Action+" by "+e.Actor)
		}
		if want := "[register by spiffe://fleet.test/proxy/p1 set data by spiffe://fleet.test/admin/alice reprovision by admin revoke by admin]"; fmt.Sprint(actions) != want {
			t.Fatalf("audit %v\nwant %s", actions, want)
		}
		n := 0
		if err := s.GroupMembers("default", func(string) error { n++; return nil }); err != nil || n != 1 {
			t.Fatalf("members %d %v", n, err)
		}
	})
}

func TestRestartKeepsEverything(t *testing.T) {
	forEngines(t, func(t *testing.T, e engine) {
		s := e.open(t, store.Options{})
		v, _, err := s.Register(reg(t, "10000000abcdef12"))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.SetDeviceData(v.Serial, 1, store.Change{Set: map[string]string{"/etc/prov/data/x": "y"}}, "admin", func(*store.View) error { return nil }); err != nil {
			t.Fatal(err)
		}
		s = e.restart(t, s)
		got, err := s.Device(v.Serial)
		if err != nil || got.Generation() != 2 || got.Data["/etc/prov/data/x"] != "y" || got.Immutable != v.Immutable {
			t.Fatalf("after restart: %+v %v", got, err)
		}
	})
}

// bbolt's file lock: a second core on the same file is refused at once.
func TestSecondOpenFailsFast(t *testing.T) {
	path := filepath.Join(t.TempDir(), "registry.db")
	openBoltAt(t, path, store.Options{})
	start := time.Now()
	_, err := store.Open(path, store.Options{LockTimeout: 200 * time.Millisecond})
	if !errors.Is(err, store.ErrLocked) {
		t.Fatalf("second open: %v", err)
	}
	if time.Since(start) > 5*time.Second {
		t.Fatalf("took %s", time.Since(start))
	}
}

// A failing commit (injected inside the real transaction, after its
// writes) leaves nothing behind.
func TestFailingCommitWritesNothing(t *testing.T) {
	forEngines(t, func(t *testing.T, e engine) {
		var fail atomic.Bool
		s := e.open(t, store.Options{BeforeCommit: func(string) error {
			if fail.Load() {
				return errors.New("injected I/O error")
			}
			return nil
		}})
		fail.Store(true)
		_, _, err := s.Register(reg(t, "10000000abcdef12"))
		if !errors.Is(err, store.ErrUnavailable) {
			t.Fatalf("Register: %v", err)
		}
		if list, _, _ := s.List("", 10); len(list) != 0 {
			t.Fatalf("%d records after a failed commit", len(list))
		}
		fail.Store(false)
		if _, created, err := s.Register(reg(t, "10000000abcdef12")); err != nil || !created {
			t.Fatalf("after recovery: %v %v", created, err)
		}
	})
}

func TestSeenCertificate(t *testing.T) {
	forEngines(t, func(t *testing.T, e engine) {
		s := e.open(t, store.Options{})
		v, _, err := s.Register(reg(t, "10000000abcdef12"))
		if err != nil {
			t.Fatal(err)
		}
		for i := range store.MaxCertificates + 3 {
			c := store.Certificate{Fingerprint: fmt.Sprintf("fp%d", i), Serial: fmt.Sprint(i)}
			if err := s.SeenCertificate(v.Serial, c); err != nil {
				t.Fatal(err)
			}
			if err := s.SeenCertificate(v.Serial, c); err != nil { // seen twice: one entry
				t.Fatal(err)
			}
		}
		got, err := s.Device(v.Serial)
		if err != nil || len(got.Certificates) != store.MaxCertificates || got.Certificates[len(got.Certificates)-1].Fingerprint != fmt.Sprintf("fp%d", store.MaxCertificates+2) {
			t.Fatalf("certificates %v %v", got.Certificates, err)
		}
	})
}

func TestListPages(t *testing.T) {
	forEngines(t, func(t *testing.T, e engine) {
		s := e.open(t, store.Options{})
		for i := range 25 {
			if _, _, err := s.Register(reg(t, fmt.Sprintf("%016x", 0x1000+i))); err != nil {
				t.Fatal(err)
			}
		}
		seen := map[string]bool{}
		cursor := ""
		for pages := 0; ; pages++ {
			page, next, err := s.List(cursor, 10)
			if err != nil {
				t.Fatal(err)
			}
			for _, v := range page {
				if seen[v.Serial] {
					t.Fatalf("%s twice", v.Serial)
				}
				seen[v.Serial] = true
			}
			if next == "" {
				break
			}
			cursor = next
			if pages > 5 {
				t.Fatal("paging does not end")
			}
		}
		if len(seen) != 25 {
			t.Fatalf("listed %d of 25", len(seen))
		}
	})
}

// Changes prepared outside the writer (certificates issued and seen) and
// changes made inside it (re-provisions), all at once on one device: none
// is lost, none applies twice, each has its audit event.
func TestConcurrentChangesOfOneDevice(t *testing.T) {
	forEngines(t, func(t *testing.T, e engine) {
		s := e.open(t, store.Options{})
		v, _, err := s.Register(reg(t, "10000000abcdef12"))
		if err != nil {
			t.Fatal(err)
		}
		const n = 12 // under MaxCertificates, so every certificate is kept
		var wg sync.WaitGroup
		for i := range n {
			wg.Go(func() {
				if err := s.SeenCertificate(v.Serial, store.Certificate{Fingerprint: fmt.Sprintf("fp%d", i), Serial: fmt.Sprint(i)}); err != nil {
					t.Error(err)
				}
			})
			wg.Go(func() {
				if _, err := s.RecordIssued(v.Serial, store.Issued{Serial: fmt.Sprint(i), IssuedBy: "spiffe://fleet.test/proxy/p1"}); err != nil {
					t.Error(err)
				}
			})
			wg.Go(func() {
				if _, err := s.Reprovision(v.Serial, "spiffe://fleet.test/admin/a"); err != nil {
					t.Error(err)
				}
			})
		}
		wg.Wait()
		got, err := s.Device(v.Serial)
		if err != nil {
			t.Fatal(err)
		}
		if len(got.Certificates) != n || len(got.Issued) != n || got.Version != 1+n {
			t.Fatalf("%d certificates, %d issued, version %d; want %d, %d, %d", len(got.Certificates), len(got.Issued), got.Version, n, n, 1+n)
		}
		events, err := s.Audit("device/"+v.Serial, 0, 1000)
		if err != nil {
			t.Fatal(err)
		}
		if len(events) != 1+3*n {
			t.Fatalf("%d audit events, want %d", len(events), 1+3*n)
		}
		for i, e := range events {
			if e.Subject != "device/"+v.Serial || (i > 0 && e.Seq <= events[i-1].Seq) {
				t.Fatalf("event %d: %+v", i, e)
			}
		}
	})
}
