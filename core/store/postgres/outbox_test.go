package postgres_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/fleetprov/prov/core/contract/hwid"
	"github.com/fleetprov/prov/core/store"
	"github.com/fleetprov/prov/core/store/postgres"
	"github.com/fleetprov/prov/internal/testenv"
	"github.com/fleetprov/prov/internal/testenv/pgtest"
)

// open returns a store on a new database with group default, and the
// database's connection string.
func open(t *testing.T) (*postgres.Store, string) {
	t.Helper()
	conn := pgtest.New(t, fmt.Sprintf("registry-v%d", postgres.SchemaVersion()), postgres.Migrate)
	return openAt(t, conn), conn
}

func openAt(t *testing.T, conn string) *postgres.Store {
	t.Helper()
	s, err := postgres.Open(t.Context(), conn, postgres.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	if _, _, err := s.EnsureGroup("default", map[string]string{"/etc/prov/data/a": "1"}, "config"); err != nil {
		t.Fatal(err)
	}
	return s
}

func register(t *testing.T, s store.Store, n int) []string {
	t.Helper()
	var serials []string
	for i := range n {
		id, err := hwid.Parse("rpi4", fmt.Sprintf("10000000%08x", i))
		if err != nil {
			t.Fatal(err)
		}
		v, _, err := s.Register(store.Registration{ID: id, Group: "default", Actor: "spiffe://fleet.test/proxy/p1",
			Immutable: store.Immutable{Hostname: fmt.Sprintf("h-%d", i), MQTTClientID: "c", MQTTGroupID: "g"}})
		if err != nil {
			t.Fatal(err)
		}
		serials = append(serials, v.Serial)
	}
	return serials
}

// drain claims jobs until none is ready and returns the devices acted on
// (serial -> generations seen).
func drain(t *testing.T, s *postgres.Store) map[string][]uint64 {
	t.Helper()
	got := map[string][]uint64{}
	for {
		n, err := s.ClaimJobs(t.Context(), 64, func(_ context.Context, j *store.Job) error {
			for _, v := range j.Devices {
				got[v.Serial] = append(got[v.Serial], v.Generation())
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			return got
		}
	}
}

// Every change that gives a device a new generation writes its job in
// the change's transaction: a registration, a data change, a
// reprovisioning, a group's change (split into members jobs that cover
// every member once); a change that fails writes none.
func TestChangesWriteTheirJobs(t *testing.T) {
	s, _ := open(t)
	serials := register(t, s, 600)
	got := drain(t, s)
	if len(got) != 600 {
		t.Fatalf("registrations: jobs for %d devices, want 600", len(got))
	}
	for serial, gens := range got {
		if !slices.Equal(gens, []uint64{1}) {
			t.Fatalf("registration of %s acted on as %v, want once at generation 1", serial, gens)
		}
	}
	v, err := s.SetDeviceData(serials[0], 1, store.Change{Set: map[string]string{"/etc/prov/data/k": "v"}}, "admin", func(*store.View) error { return nil })
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.SetDeviceData(serials[0], 1, store.Change{Set: map[string]string{"/etc/prov/data/k": "w"}}, "admin", func(*store.View) error { return nil }); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("stale If-Match: %v", err)
	}
	if _, err := s.Reprovision(serials[1], "admin"); err != nil {
		t.Fatal(err)
	}
	got = drain(t, s)
	if len(got) != 2 || !slices.Equal(got[serials[0]], []uint64{v.Generation()}) || len(got[serials[1]]) != 1 {
		t.Fatalf("a data change and a reprovisioning: %v", got)
	}
	g, err := s.SetGroupData("default", 0, store.Change{Set: map[string]string{"/etc/prov/data/a": "2"}}, "admin", func(*store.Group) error { return nil })
	if err != nil || g.Version != 1 {
		t.Fatalf("group change: %+v %v", g, err)
	}
	got = drain(t, s)
	if len(got) != 600 {
		t.Fatalf("group change reached %d members, want 600", len(got))
	}
	for serial, gens := range got {
		if len(gens) != 1 {
			t.Fatalf("%s acted on %d times by one group change", serial, len(gens))
		}
		if d, err := s.Device(serial); err != nil || gens[0] != d.Generation() {
			t.Fatalf("%s: job read generation %v, device is at %+v %v", serial, gens, d, err)
		}
	}
}

// Claimers on several connections (several cores) never hold one job at
// once: a group change of 2,000 members acted on by four claimers
// reaches every member exactly once.
func TestClaimersShareWithoutOverlap(t *testing.T) {
	s, conn := open(t)
	others := []*postgres.Store{s, openAt(t, conn), openAt(t, conn)}
	register(t, s, 2000)
	drain(t, s)
	if _, err := s.SetGroupData("default", 0, store.Change{Set: map[string]string{"/etc/prov/data/a": "2"}}, "admin", func(*store.Group) error { return nil }); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	seen := map[string]int{}
	byCore := make([]int, len(others))
	var wg sync.WaitGroup
	for i := range 4 {
		st := others[i%len(others)]
		wg.Go(func() {
			for {
				n, err := st.ClaimJobs(t.Context(), 64, func(_ context.Context, j *store.Job) error {
					mu.Lock()
					defer mu.Unlock()
					for _, v := range j.Devices {
						seen[v.Serial]++
						byCore[i%len(others)]++
					}
					return nil
				})
				if err != nil {
					t.Error(err)
					return
				}
				if n == 0 {
					return
				}
			}
		})
	}
	wg.Wait()
	if len(seen) != 2000 {
		t.Fatalf("%d members acted on, want 2000", len(seen))
	}
	for serial, n := range seen {
		if n != 1 {
			t.Fatalf("%s acted on %d times", serial, n)
		}
	}
	t.Logf("members acted on by each store: %v", byCore)
}

// A core that dies holding jobs (its transaction ends with its
// connection) leaves them to another, which acts on them; a job whose
// work failed is tried again later, with its attempts counted.
func TestJobsOfADeadClaimerAreNotLost(t *testing.T) {
	s, conn := open(t)
	other := openAt(t, conn)
	serials := register(t, s, 3)
	ctx, cancel := context.WithCancel(t.Context())
	holding := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		_, err := s.ClaimJobs(ctx, 64, func(ctx context.Context, _ *store.Job) error {
			close(holding)
			<-ctx.Done() // dies in the middle of the work
			return ctx.Err()
		})
		done <- err
	}()
	<-holding
	if n, err := other.ClaimJobs(t.Context(), 64, func(context.Context, *store.Job) error { return nil }); err != nil || n != 0 {
		t.Fatalf("another core claimed %d held jobs (%v)", n, err)
	}
	cancel()
	if err := <-done; err == nil {
		t.Fatal("a claim cut short committed")
	}
	// The server lets the locks go once it sees the connection closed.
	got := map[string][]uint64{}
	if err := testenv.WaitFor(10*time.Second, func() error {
		for serial, gens := range drain(t, other) {
			got[serial] = append(got[serial], gens...)
		}
		if len(got) != 3 {
			return fmt.Errorf("after the claimer died another acted on %d devices, want 3 (%v)", len(got), got)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}

	if _, err := s.Reprovision(serials[0], "admin"); err != nil {
		t.Fatal(err)
	}
	if n, err := s.ClaimJobs(t.Context(), 64, func(context.Context, *store.Job) error { return errors.New("broker away") }); err != nil || n != 1 {
		t.Fatalf("failing claim: %d %v", n, err)
	}
	if got := drain(t, s); len(got) != 0 {
		t.Fatalf("a failed job was tried again at once: %v", got)
	}
	db, err := pgx.Connect(t.Context(), conn)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = db.Close(t.Context()) }()
	var attempts int
	if err := db.QueryRow(t.Context(), "UPDATE jobs SET not_before = now() RETURNING attempts").Scan(&attempts); err != nil || attempts != 1 {
		t.Fatalf("the failed job: attempts %d %v", attempts, err)
	}
	var jobAttempts int
	if n, err := s.ClaimJobs(t.Context(), 64, func(_ context.Context, j *store.Job) error { jobAttempts = j.Attempts; return nil }); err != nil || n != 1 || jobAttempts != 1 {
		t.Fatalf("retry: %d %v, attempts %d", n, err, jobAttempts)
	}
}

// The listener wakes on a group change committed by another core, and
// again after its connection is cut (a reconnection may have missed
// some).
func TestListenerWakesAndRereadsAfterReconnecting(t *testing.T) {
	s, conn := open(t)
	other := openAt(t, conn)
	var wakes atomic.Int64
	ctx, cancel := context.WithCancel(t.Context())
	stopped := make(chan error, 1)
	go func() { stopped <- s.ListenJobs(ctx, func() { wakes.Add(1) }, func(error) {}) }()
	waitWakes := func(n int64, what string) {
		t.Helper()
		if err := testenv.WaitFor(10*time.Second, func() error {
			if w := wakes.Load(); w < n {
				return fmt.Errorf("%d wake-ups, want %d (%s)", w, n, what)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	waitWakes(1, "on connecting")
	register(t, other, 1) // a device's job wakes only its own core
	if _, err := other.SetGroupData("default", 0, store.Change{Set: map[string]string{"/etc/prov/data/a": "2"}}, "admin", func(*store.Group) error { return nil }); err != nil {
		t.Fatal(err)
	}
	waitWakes(2, "on another core's group change")
	db, err := pgx.Connect(t.Context(), conn)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = db.Close(t.Context()) }()
	if _, err := db.Exec(t.Context(), "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query ILIKE 'listen%'"); err != nil {
		t.Fatal(err)
	}
	waitWakes(3, "after reconnecting")
	cancel()
	if err := <-stopped; err != nil {
		t.Fatalf("listener stopped with %v", err)
	}
}

// A core that must be alone on its database (store.singleCore) is
// refused where another core runs, and a shared one where a single one
// runs.
func TestSingleCoreIsAlone(t *testing.T) {
	_, conn := open(t)
	if _, err := postgres.Open(t.Context(), conn, postgres.Options{SingleCore: true}); !errors.Is(err, postgres.ErrNotAlone) {
		t.Fatalf("single core beside a shared one: %v", err)
	}
	conn2 := pgtest.New(t, fmt.Sprintf("registry-v%d", postgres.SchemaVersion()), postgres.Migrate)
	single, err := postgres.Open(t.Context(), conn2, postgres.Options{SingleCore: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := postgres.Open(t.Context(), conn2, postgres.Options{}); !errors.Is(err, postgres.ErrNotAlone) {
		t.Fatalf("a shared core beside a single one: %v", err)
	}
	_ = single.Close()
	s, err := postgres.Open(t.Context(), conn2, postgres.Options{})
	if err != nil {
		t.Fatalf("after the single core stopped: %v", err)
	}
	_ = s.Close()
}
