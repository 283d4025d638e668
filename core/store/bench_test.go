package store_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"golang.org/x/sync/errgroup"

	"github.com/fleetprov/prov/core/contract/coreapi"
	"github.com/fleetprov/prov/core/store"
	"github.com/fleetprov/prov/core/store/postgres"
	"github.com/fleetprov/prov/internal/testenv/pgtest"
)

// BenchmarkEngines measures, on each engine, a registration (a new
// hardware ID each time) and a data change (If-Match at the generation
// just read), one caller at a time, and a device read (a fetch's store
// work) by 8 callers: the cost of one request's store work.
// Not a durability-for-durability comparison: the test cluster runs with
// fsync=off (pgtest), while bbolt syncs every commit to the disk.
func BenchmarkEngines(b *testing.B) {
	for _, e := range engines {
		b.Run(e.name+"/register", func(b *testing.B) {
			s := e.open(b, store.Options{})
			b.ReportAllocs()
			for i := range b.N {
				if _, _, err := s.Register(reg(b, fmt.Sprintf("20%014x", i))); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(e.name+"/read", func(b *testing.B) {
			s := e.open(b, store.Options{})
			v, _, err := s.Register(reg(b, "10000000abcdef13"))
			if err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			b.SetParallelism(4) // 8 readers on 2 CPUs, as BenchmarkReplicas' fetches
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if _, err := s.Device(v.Serial); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
		b.Run(e.name+"/change", func(b *testing.B) {
			s := e.open(b, store.Options{})
			v, _, err := s.Register(reg(b, "10000000abcdef12"))
			if err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			for i := range b.N {
				c := store.Change{Set: map[string]string{"/etc/prov/data/k": fmt.Sprint(i)}}
				if v, err = s.SetDeviceData(v.Serial, v.Generation(), c, "spiffe://fleet.test/admin/a", func(*store.View) error { return nil }); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkPostgresStateBytes registers 10,000 devices on PostgreSQL and
// reports the bytes per device of the devices table with its indexes and
// TOAST (pg_total_relation_size), after VACUUM, and of the audit trail
// beside it (one event per registration).
func BenchmarkPostgresStateBytes(b *testing.B) {
	const n = 10000
	for range b.N {
		conn := pgtest.New(b, fmt.Sprintf("registry-v%d", postgres.SchemaVersion()), postgres.Migrate)
		s := openPostgresAt(b, conn, postgres.Options{})
		ensureDefault(b, s)
		for i := range n {
			if _, _, err := s.Register(reg(b, fmt.Sprintf("30%014x", i))); err != nil {
				b.Fatal(err)
			}
		}
		ctx := context.Background()
		db, err := pgx.Connect(ctx, conn)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := db.Exec(ctx, "VACUUM ANALYZE"); err != nil {
			b.Fatal(err)
		}
		var rows, devices, audit int64
		if err := db.QueryRow(ctx, `SELECT (SELECT count(*) FROM devices), pg_total_relation_size('devices'), pg_total_relation_size('audit')`).Scan(&rows, &devices, &audit); err != nil {
			b.Fatal(err)
		}
		_ = db.Close(ctx)
		if rows != n {
			b.Fatalf("%d rows, want %d", rows, n)
		}
		b.ReportMetric(float64(devices)/n, "device-bytes/device")
		b.ReportMetric(float64(audit)/n, "audit-bytes/device")
	}
}

// BenchmarkReports measures, on each engine, what devices' reports cost
// the store: a report that is a transition (its record and an audit
// event) from 16 devices at once, as after a group change; and the fleet
// view's pass over a group of 1,000 reporting members (GroupStates, as
// `admin fleet`, the fleet gauges and a rollout's wave status read it).
func BenchmarkReports(b *testing.B) {
	const members = 1000
	for _, e := range engines {
		b.Run(e.name+"/report", func(b *testing.B) {
			s := e.open(b, store.Options{})
			var serials []string
			for i := range 16 {
				v, _, err := s.Register(reg(b, fmt.Sprintf("40%014x", i)))
				if err != nil {
					b.Fatal(err)
				}
				serials = append(serials, v.Serial)
			}
			var next atomic.Int64
			b.ReportAllocs()
			b.SetParallelism(8) // 16 devices on 2 CPUs
			b.RunParallel(func(pb *testing.PB) {
				serial := serials[next.Add(1)%16]
				gen := uint64(0)
				for pb.Next() {
					gen++
					if _, err := s.SaveReport(serial, coreapi.Report{Generation: gen, State: coreapi.StateHealthy, Running: gen, BootID: "b",
						At: time.Now()}); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
		b.Run(e.name+"/fleet-1000", func(b *testing.B) {
			s := e.open(b, store.Options{})
			for i := range members {
				v, _, err := s.Register(reg(b, fmt.Sprintf("41%014x", i)))
				if err != nil {
					b.Fatal(err)
				}
				if _, err := s.SaveReport(v.Serial, coreapi.Report{Generation: 1, State: coreapi.StateHealthy, Running: 1, BootID: "b", At: time.Now()}); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				n := 0
				if err := s.GroupStates("default", func(m store.MemberState) error {
					if m.Report != nil {
						n++
					}
					return nil
				}); err != nil || n != members {
					b.Fatalf("%d reporting members of %d: %v", n, members, err)
				}
			}
			b.ReportMetric(float64(members*b.N)/b.Elapsed().Seconds(), "devices/s")
		})
	}
}

// BenchmarkMigrate copies a bbolt registry of 20,000 devices (1,000 with
// -short) into an empty PostgreSQL database (Import) and verifies the copy
// (Verify, 1,000 devices sampled), as prov-core store migrate does. A
// running rollout holds every member but its two canaries, and a quarter
// of the devices have reported: the holds cost an UPDATE of the devices
// after their COPY. It reports devices copied and verified per second.
func BenchmarkMigrate(b *testing.B) {
	n := 20_000
	if testing.Short() {
		n = 1_000
	}
	src := openBolt(b, store.Options{}).(*store.Bolt)
	serials := make([]string, n)
	inParallel(b, n, func(i int) error {
		v, _, err := src.Register(reg(b, fmt.Sprintf("30%014x", i)))
		if err == nil {
			serials[i] = v.Serial
		}
		return err
	})
	at := time.Date(2026, 11, 30, 9, 0, 0, 0, time.UTC)
	inParallel(b, n/4, func(i int) error {
		_, err := src.SaveReport(serials[4*i], coreapi.Report{Generation: 1, State: coreapi.StateHealthy, Running: 1, BootID: "b", At: at})
		return err
	})
	ro, _, err := src.StartRollout(&store.Rollout{Group: "default", Waves: []coreapi.Wave{{Serials: serials[:2]}, {Rest: true}}}, 0,
		store.Change{Set: map[string]string{"/etc/prov/data/a": "2"}}, "admin", func(*store.Group) error { return nil })
	if err != nil {
		b.Fatal(err)
	}
	next := *ro
	next.Released = 1
	if _, _, err := src.StepRollout(store.RolloutStep{Next: &next, IfRev: ro.Rev, Release: serials[:2], Actor: "core", Action: "rollout wave"}); err != nil {
		b.Fatal(err)
	}
	var copying, verifying time.Duration
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		dst := emptyPostgres(b)
		b.StartTimer()
		start := time.Now()
		got, err := dst.Import(b.Context(), src)
		if err != nil || got.Holds != n-2 {
			b.Fatalf("import: %s %v", got, err)
		}
		copying += time.Since(start)
		start = time.Now()
		if v, err := store.Verify(src, dst, 1000); err != nil || !v.OK() {
			b.Fatalf("verify: %+v %v", v, err)
		}
		verifying += time.Since(start)
	}
	b.ReportMetric(float64(n*b.N)/copying.Seconds(), "devices/s-copied")
	b.ReportMetric(float64(n*b.N)/verifying.Seconds(), "devices/s-verified")
}

// inParallel calls fn with 0 to n-1 from 8 goroutines (bbolt's group
// committer takes their writes together).
func inParallel(b *testing.B, n int, fn func(i int) error) {
	b.Helper()
	var g errgroup.Group
	g.SetLimit(8)
	for i := range n {
		g.Go(func() error { return fn(i) })
	}
	if err := g.Wait(); err != nil {
		b.Fatal(err)
	}
}
