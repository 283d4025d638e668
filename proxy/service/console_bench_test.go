package service_test

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/fleetprov/prov/core/coretest"
	"github.com/fleetprov/prov/internal/testenv/browser"
	"github.com/fleetprov/prov/pki"
	"github.com/fleetprov/prov/proxy/auditlog"
	"github.com/fleetprov/prov/proxy/proxytest"
)

// BenchmarkConsole measures the console in the browser with a large batch
// under a line's pace: a factory record already holding a batch of
// 10,000 boards (all but the last few enrolled, one attempt in 50
// refused), then live enrollments at 100 a minute. It reports the page's
// load (navigation to the state shown), the state's size, each attempt's
// time from its record's write to its row on screen (p50, p95, max), the
// longest gap between animation frames while it ran (how long the page
// stopped responding) and the page's JS heap. -short: 500 boards and
// 3 attempts (make test's one pass).
func BenchmarkConsole(b *testing.B) {
	boards, live := 10000, 20
	if testing.Short() {
		boards, live = 500, 3
	}
	dir := b.TempDir()
	if st, err := os.Stat("/dev/shm"); err == nil && st.IsDir() {
		// The record is written through fsync; on tmpfs the setup's
		// 10,000 appends take a second, not a minute.
		if dir, err = os.MkdirTemp("/dev/shm", "console-bench-"); err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { _ = os.RemoveAll(dir) })
	}
	hw := func(i int) string { return fmt.Sprintf("10000000%08x", i) }
	var manifest strings.Builder
	manifest.WriteString("board,hardwareId\n")
	for i := range boards {
		fmt.Fprintf(&manifest, "rpi4,%s\n", hw(i))
	}
	manifestPath := filepath.Join(dir, "lot-10k.csv")
	if err := os.WriteFile(manifestPath, []byte(manifest.String()), 0o600); err != nil {
		b.Fatal(err)
	}
	recordPath := filepath.Join(dir, "factory.jsonl")
	rec, err := auditlog.Open(recordPath, nil)
	if err != nil {
		b.Fatal(err)
	}
	began := time.Now().Add(-8 * time.Hour) // a shift's worth, until now
	step := 8 * time.Hour / time.Duration(boards)
	for i := range boards - live {
		r := auditlog.Record{Time: began.Add(time.Duration(i) * step), Proxy: "spiffe://bench/proxy/factory1", Source: fmt.Sprintf("10.1.0.%d", 21+i%4),
			Board: "rpi4", HardwareID: hw(i), Serial: fmt.Sprintf("%010x", i), Batch: "lot-10k",
			Steps: []auditlog.Step{{Name: "check", US: 90}, {Name: "admit", US: 2500}, {Name: "register", US: 3100}, {Name: "sign", US: 21000}, {Name: "bundle", US: 10}}}
		if i%50 == 49 {
			r.Result, r.Rule, r.Reason = auditlog.Refused, "reenrollment", "reenrollment: enrolled before with another key"
		} else {
			r.Result, r.CertSerial = auditlog.Enrolled, fmt.Sprint(1000000+i)
		}
		if _, err := rec.Append(r); err != nil {
			b.Fatal(err)
		}
	}
	if err := rec.Close(); err != nil {
		b.Fatal(err)
	}
	core := coretest.Start(b, "limits: {proxy: {rate: 100000, burst: 100000}}\n")
	top := fmt.Sprintf("record: {path: %q}\n%s", recordPath, proxytest.ConsoleSection(core, "stations: [{network: 127.0.0.0/8, name: bench station}]"))
	p := proxytest.StartWith(b, core, top, local+fmt.Sprintf("rate: 100000\nburst: 100000\nbatches:\n  - {name: lot-10k, manifest: %q}\n", manifestPath))
	e := &env{core: core, proxy: p, url: p.URL, console: p.ConsoleURL, record: p.Record}
	e.roots = loadRoots(b, core.RootCert())

	tab := browser.Open(b, core.RootCert())
	b.ResetTimer()
	for range b.N {
		loadStart := time.Now()
		tab.Navigate(e.console + "/")
		tab.WaitUntil(`document.body.dataset.loaded === "true" && document.getElementById("conn").dataset.state === "live"`)
		load := time.Since(loadStart)
		stateBytes := tab.Eval(`(() => { const x = new XMLHttpRequest(); x.open("GET", "/console/state", false); x.send(); return x.responseText.length; })()`)
		// When each row first shows, by the page's clock (this machine's).
		tab.Eval(`window.benchSeen = {}; window.benchGap = 0;
			new MutationObserver(() => { for (const li of document.querySelectorAll("#attempts li")) { if (!(li.dataset.seq in benchSeen)) benchSeen[li.dataset.seq] = Date.now(); } })
			  .observe(document.getElementById("attempts"), {childList: true});
			(function frame(last) { requestAnimationFrame((now) => { if (last) benchGap = Math.max(benchGap, now - last); frame(now); }); })(0); true`)
		var seqs []uint64
		pace := time.NewTicker(time.Minute / 100)
		for i := boards - live; i < boards; i++ {
			<-pace.C
			code, _, ae := e.enroll(b, req("rpi4", hw(i), newDevice(b)))
			if code != 200 {
				b.Fatalf("enroll %s: %d %+v", hw(i), code, ae)
			}
		}
		pace.Stop()
		if err := auditlog.Read(recordPath, func(r auditlog.Record) error {
			if r.Seq > uint64(boards-live) {
				seqs = append(seqs, r.Seq)
			}
			return nil
		}); err != nil {
			b.Fatal(err)
		}
		last := seqs[len(seqs)-1]
		tab.WaitUntil(fmt.Sprintf(`"%d" in window.benchSeen`, last))
		var lat []float64
		if err := auditlog.Read(recordPath, func(r auditlog.Record) error {
			if r.Seq > uint64(boards-live) {
				seen, ok := tab.Eval(fmt.Sprintf(`window.benchSeen["%d"] || 0`, r.Seq)).(float64)
				if !ok || seen == 0 {
					b.Errorf("attempt %d never showed", r.Seq)
					return nil
				}
				lat = append(lat, seen-float64(r.Time.UnixNano())/1e6)
			}
			return nil
		}); err != nil {
			b.Fatal(err)
		}
		slices.Sort(lat)
		b.ReportMetric(float64(load.Milliseconds()), "load-ms")
		b.ReportMetric(toFloat(stateBytes)/1024, "state-KiB")
		b.ReportMetric(lat[len(lat)/2], "p50-shown-ms")
		b.ReportMetric(lat[min(len(lat)-1, len(lat)*95/100)], "p95-shown-ms")
		b.ReportMetric(lat[len(lat)-1], "max-shown-ms")
		b.ReportMetric(toFloat(tab.Eval(`benchGap`)), "max-frame-gap-ms")
		b.ReportMetric(toFloat(tab.Eval(`performance.memory ? performance.memory.usedJSHeapSize : 0`))/(1<<20), "js-heap-MiB")
		b.Logf("%d boards in the batch, %d attempts at 100/min: load %s, shown after the record's write %.0f..%.0f ms", boards, live, load, lat[0], lat[len(lat)-1])
	}
}

func toFloat(v any) float64 {
	f, _ := v.(float64)
	return f
}

func loadRoots(tb testing.TB, path string) *pki.TrustBundle {
	tb.Helper()
	roots, err := pki.LoadTrustBundle(path)
	if err != nil {
		tb.Fatal(err)
	}
	return roots
}
