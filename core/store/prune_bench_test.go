package store_test

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	bolt "go.etcd.io/bbolt"

	"github.com/fleetprov/prov/core/store"
	"github.com/fleetprov/prov/core/store/postgres"
	"github.com/fleetprov/prov/internal/testenv/pgtest"
)

var retentionDevices = flag.Int("retention-devices", 200, "devices in BenchmarkAuditRetention (with -short: 4, and 35 days)")

// Today's rate of audit events of a device in service: its certificate
// lives 24 h (prov-pki's default) and is renewed at 2/3 of its life, and
// core records each new certificate the first time the device uses it:
// 1.5 "certificate seen" events a day, and nothing else while nobody
// changes its data.
const (
	renewalsPerDay = 1.5
	retentionDays  = 30
)

// BenchmarkAuditRetention measures the store's bytes per device after a
// year of daily renewals at today's rate (every renewal through the
// store's own write path, SeenCertificate), on each engine:
//
//   - year: without pruning (bbolt: the file, and the file after `bbolt
//     compact`; PostgreSQL: the devices and audit tables with their
//     indexes after VACUUM),
//   - pruned: after pruning that store to 30 days (bbolt: compacted: the
//     file itself does not shrink; PostgreSQL: after VACUUM, which makes
//     the space reusable but leaves the table's pages, and after VACUUM
//     FULL, which gives them back),
//   - daily: the same year with a prune to 30 days every simulated day
//     (and VACUUM after it on PostgreSQL, as autovacuum would): the size
//     as it stands, nothing compacted: what the store grows to.
func BenchmarkAuditRetention(b *testing.B) {
	// -short (make test's tiny run): enough days for a few daily prunes.
	n, days := *retentionDevices, 365
	if testing.Short() {
		n, days = 4, retentionDays+5
	}
	b.Run("bbolt", func(b *testing.B) {
		for range b.N {
			dir := b.TempDir()
			year := filepath.Join(dir, "year.db")
			s, c := openBoltStore(b, year)
			simulateYear(b, s, c, n, days, false, nil)
			b.ReportMetric(fileBytes(b, year)/float64(n), "year-file-B/device")
			b.ReportMetric(compactBytes(b, year)/float64(n), "year-compact-B/device")
			s, c = openBoltStore(b, year)
			c.at(day(days))
			if _, err := s.PruneAudit(b.Context(), day(days-retentionDays), admin); err != nil {
				b.Fatal(err)
			}
			closeBolt(b, s)
			b.ReportMetric(fileBytes(b, year)/float64(n), "pruned-file-B/device")
			b.ReportMetric(compactBytes(b, year)/float64(n), "pruned-compact-B/device")
			daily := filepath.Join(dir, "daily.db")
			s, c = openBoltStore(b, daily)
			simulateYear(b, s, c, n, days, true, nil)
			b.ReportMetric(fileBytes(b, daily)/float64(n), "daily-file-B/device")
		}
	})
	b.Run("postgres", func(b *testing.B) {
		for range b.N {
			for _, daily := range []bool{false, true} {
				conn := pgtest.New(b, fmt.Sprintf("registry-v%d", postgres.SchemaVersion()), postgres.Migrate)
				c := &clock{now: day0}
				s := openPostgresAt(b, conn, postgres.Options{Now: c.Now})
				db, err := pgx.Connect(b.Context(), conn)
				if err != nil {
					b.Fatal(err)
				}
				vacuum := func(full string) float64 {
					b.Helper()
					if _, err := db.Exec(b.Context(), "VACUUM "+full+" ANALYZE devices, audit"); err != nil {
						b.Fatal(err)
					}
					var size int64
					if err := db.QueryRow(b.Context(), "SELECT pg_total_relation_size('devices') + pg_total_relation_size('audit')").Scan(&size); err != nil {
						b.Fatal(err)
					}
					return float64(size) / float64(n)
				}
				if daily {
					simulateYear(b, s, c, n, days, true, func() { vacuum("") })
					b.ReportMetric(vacuum(""), "daily-B/device")
				} else {
					simulateYear(b, s, c, n, days, false, nil)
					b.ReportMetric(vacuum(""), "year-B/device")
					c.at(day(days))
					if _, err := s.PruneAudit(b.Context(), day(days-retentionDays), admin); err != nil {
						b.Fatal(err)
					}
					b.ReportMetric(vacuum(""), "pruned-B/device")
					b.ReportMetric(vacuum("FULL"), "pruned-full-B/device")
				}
				_ = db.Close(context.Background())
			}
		}
	})
}

// simulateYear registers n devices on day 0 and renews each one's
// certificate at today's rate for days, up to 64 devices at a time (the
// writes share commits, as a fleet's do); daily
// prunes to 30 days at the end of every day, then runs after (if set).
func simulateYear(b *testing.B, s store.Store, c *clock, n, days int, daily bool, after func()) {
	b.Helper()
	c.at(day0)
	ensureDefault(b, s)
	serials := make([]string, n)
	for i := range n {
		v, _, err := s.Register(reg(b, fmt.Sprintf("40%014x", i)))
		if err != nil {
			b.Fatal(err)
		}
		serials[i] = v.Serial
	}
	renewed := 0
	for d := range days {
		c.at(day(d).Add(12 * time.Hour))
		// Renewals due by the end of day d, at 1.5 a day.
		due := int(float64(d+1) * renewalsPerDay)
		for ; renewed < due; renewed++ {
			work := make(chan string)
			var wg sync.WaitGroup
			for range min(n, 64) {
				wg.Go(func() {
					for serial := range work {
						cert := store.Certificate{Fingerprint: fmt.Sprintf("%s-%d", serial, renewed), Serial: fmt.Sprint(renewed),
							NotAfter: day(d + 1), FirstSeen: day(d)}
						if err := s.SeenCertificate(serial, cert); err != nil {
							b.Error(err)
						}
					}
				})
			}
			for _, serial := range serials {
				work <- serial
			}
			close(work)
			wg.Wait()
		}
		if daily && d >= retentionDays {
			c.at(day(d + 1))
			if _, err := s.PruneAudit(b.Context(), day(d+1-retentionDays), "core"); err != nil {
				b.Fatal(err)
			}
			if after != nil {
				after()
			}
		}
	}
	if b.Failed() {
		b.FailNow()
	}
	if bs, ok := s.(*store.Bolt); ok {
		closeBolt(b, bs)
	}
}

// openBoltStore opens a bbolt store at path with a settable clock.
func openBoltStore(b *testing.B, path string) (*store.Bolt, *clock) {
	c := &clock{now: day0}
	return openBoltAt(b, path, store.Options{Now: c.Now}), c
}

func closeBolt(b *testing.B, s *store.Bolt) {
	b.Helper()
	if err := s.Check(); err != nil {
		b.Fatal(err)
	}
	if err := s.Close(); err != nil {
		b.Fatal(err)
	}
}

func fileBytes(b *testing.B, path string) float64 {
	b.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		b.Fatal(err)
	}
	return float64(fi.Size())
}

// compactBytes is the size of the bbolt file at path once compacted, as
// `bbolt compact` writes it (bolt.Compact is what that command runs).
func compactBytes(b *testing.B, path string) float64 {
	b.Helper()
	src, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true})
	if err != nil {
		b.Fatal(err)
	}
	defer func() { _ = src.Close() }()
	out := path + ".compact"
	dst, err := bolt.Open(out, 0o600, nil)
	if err != nil {
		b.Fatal(err)
	}
	if err := bolt.Compact(dst, src, 64<<20); err != nil {
		b.Fatal(err)
	}
	if err := dst.Close(); err != nil {
		b.Fatal(err)
	}
	size := fileBytes(b, out)
	if err := os.Remove(out); err != nil {
		b.Fatal(err)
	}
	return size
}
