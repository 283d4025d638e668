package status_test

import (
	"encoding/json"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fleetprov/prov/proxy/auditlog"
	"github.com/fleetprov/prov/proxy/status"
)

// benchRecord is an enrollment as the factory record holds it.
func benchRecord(i int, at time.Time) auditlog.Record {
	return auditlog.Record{
		Seq: uint64(i + 1), Time: at, Proxy: "line-1", Source: "10.0.7.21:51234", Board: "rpi4", //nolint:gosec // small
		HardwareID: fmt.Sprintf("10000000%08x", i), Batch: "po-1", Result: auditlog.Enrolled, Serial: fmt.Sprintf("%016x", i),
		CertSerial: "3a1f9c2b7d4e5f60718293a4b5c6d7e8", Hash: "9f2c5e7a1b3d4c6e8f0a2b4c6d8e0f1a3b5c7d9e1f2a4b6c8d0e2f4a6b8c0d2e4",
	}
}

// BenchmarkConsoleObserve is the console's cost per record on the
// enrollment path (status, batch and feed), with no console watching and
// with 10. A loop of Observe outruns any reader on two cores, so the
// subscribers are drained between rounds of half a queue, off the clock:
// none is dropped, and each record goes to every one of them.
func BenchmarkConsoleObserve(b *testing.B) {
	for _, subs := range []int{0, 10} {
		b.Run(fmt.Sprintf("subscribers=%d", subs), func(b *testing.B) {
			c := status.NewConsole([]status.Plan{{Name: "po-1", Planned: 10000}}, nil)
			ss := make([]*status.Sub, subs)
			for i := range ss {
				ss[i] = c.Feed.Subscribe()
			}
			at := time.Now()
			recs := make([]auditlog.Record, b.N)
			for i := range recs {
				recs[i] = benchRecord(i, at)
			}
			b.ReportAllocs()
			b.ResetTimer()
			for i := range b.N {
				c.Observe(recs[i])
				if i%(status.FeedQueue/2) == 0 {
					b.StopTimer()
					for _, s := range ss {
						for len(s.C) > 0 {
							<-s.C
						}
					}
					b.StartTimer()
				}
			}
			b.StopTimer()
			b.ReportMetric(float64(subs-c.Feed.Subscribers()), "dropped")
			for _, s := range ss {
				c.Feed.Unsubscribe(s)
			}
		})
	}
}

// BenchmarkConsoleState is what a browser fetches when the console opens
// or reconnects (GET /console/state) with a 10,000-board batch in the
// record: the state and its JSON, the bytes it is, and how long it holds
// up a record being observed meanwhile.
func BenchmarkConsoleState(b *testing.B) {
	boards := 10000
	if testing.Short() {
		boards = 1000
	}
	at := time.Now().Add(-2 * time.Hour)
	c := status.NewConsole([]status.Plan{{Name: "po-1", Planned: boards}, {Name: "po-2", Planned: 500}}, nil)
	for i := range boards {
		r := benchRecord(i, at.Add(time.Duration(i)*time.Second/2))
		if i%50 == 0 { // a refusal now and then, retried at once
			r.Result, r.Rule, r.Reason = auditlog.Refused, "rate", "too many attempts"
			c.Observe(r)
			r.Result, r.Rule, r.Reason = auditlog.Enrolled, "", ""
		}
		c.Observe(r)
	}
	b.Run(fmt.Sprintf("boards=%d", boards), func(b *testing.B) {
		b.ReportAllocs()
		size := 0
		for b.Loop() {
			j, err := json.Marshal(c.State(time.Now()))
			if err != nil {
				b.Fatal(err)
			}
			size = len(j)
		}
		b.ReportMetric(float64(size), "json-bytes")
	})
	// A record observed (on the enrollment path) while a console fetches
	// the state over and over: what the state's locks cost enrollments.
	// The max is mostly the shared machine's (it is as high with no fetch).
	b.Run(fmt.Sprintf("observe-while-fetching/boards=%d", boards), func(b *testing.B) {
		var fetching atomic.Bool
		fetching.Store(true)
		var wg sync.WaitGroup
		wg.Go(func() {
			for fetching.Load() {
				c.State(time.Now())
			}
		})
		var waits []time.Duration
		i := boards
		for b.Loop() {
			// A board of the batch tried again: the batch stays at
			// its size however long the loop runs.
			r := benchRecord(i%boards, time.Now())
			r.Seq, r.Result, r.Rule = uint64(i+1), auditlog.Refused, "reenrollment" //nolint:gosec // small
			t0 := time.Now()
			c.Observe(r)
			waits = append(waits, time.Since(t0))
			i++
		}
		fetching.Store(false)
		wg.Wait()
		slices.Sort(waits)
		b.ReportMetric(float64(waits[len(waits)/2].Nanoseconds())/1000, "p50-µs")
		b.ReportMetric(float64(waits[(len(waits)-1)*99/100].Nanoseconds())/1000, "p99-µs")
		b.ReportMetric(float64(waits[len(waits)-1].Nanoseconds())/1000, "max-µs")
	})
}
