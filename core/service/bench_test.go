package service_test

import (
	"bufio"
	"crypto/tls"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"runtime/pprof"
	"runtime/trace"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fleetprov/prov/core/contract/coreapi"
	"github.com/fleetprov/prov/core/coretest"
	"github.com/fleetprov/prov/core/store"
	"github.com/fleetprov/prov/internal/testenv"
	"github.com/fleetprov/prov/pki"
	"github.com/fleetprov/prov/pki/ca/catest"
)

// Fleet sizes; the defaults are the issue's, -short makes them tiny and
// these flags make them larger (go test -bench Store -args -store-devices=N).
var (
	reprovisionDevices = flag.Int("reprovision-devices", 100000, "devices in the re-provisioned group (BenchmarkReprovision)")
	storeDevices       = flag.Int("store-devices", 1000000, "devices in the store (BenchmarkStore)")
)

// benchFleet is a fleet benchmark's size (short with -short), CA, core
// directory and configuration.
func benchFleet(b *testing.B, size, short int, extraYAML string) (n int, c *catest.CA, dir, cfgPath string) {
	b.Helper()
	n = size
	if testing.Short() {
		n = short
	}
	if n < 1 {
		b.Fatalf("a fleet of %d devices: want at least 1 (-reprovision-devices, -store-devices)", n)
	}
	c = catest.Shared(b)
	dir = b.TempDir()
	return n, c, dir, coretest.Config(b, c.Deployment, dir, extraYAML)
}

const benchLimits = "limits: {device: {rate: 1000000, burst: 1000000}, proxy: {rate: 1000000, burst: 1000000}}\n"

// BenchmarkFetch measures image fetches from core over mTLS, with a new
// connection (full handshake) per fetch and with keep-alive, beside a bare
// Go mTLS server that returns the same bytes, with the same client and
// certificates and 8 concurrent clients, in one run: ops/s and p50/p99 of
// core/* beside bare/*.
func BenchmarkFetch(b *testing.B) {
	core := coretest.Start(b, benchLimits)
	d := core.Register(b, "rpi4", coretest.RPi4(900))
	cert := core.Enrolled(b, d.Serial, 0)
	url := core.URL + "/v1/devices/" + d.Serial + "/bundle"

	// The bare server: the same certificate, the same client verification,
	// the same bytes, nothing else.
	resp, err := core.HTTP(b, cert).Get(url)
	if err != nil {
		b.Fatal(err)
	}
	bundle, _ := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	roots, err := pki.LoadTrustBundle(core.RootCert())
	if err != nil {
		b.Fatal(err)
	}
	coreCert := core.ServiceCert(b, pki.RoleCore, "core")
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{*coreCert},
		ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: roots.Pool(), NextProtos: []string{"h2", "http/1.1"}})
	if err != nil {
		b.Fatal(err)
	}
	bare := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", coreapi.MediaTypeBundle)
		_, _ = w.Write(bundle)
	})}
	go func() { _ = bare.Serve(ln) }()
	b.Cleanup(func() { _ = bare.Close() })
	bareURL := "https://" + ln.Addr().String() + "/v1/devices/" + d.Serial + "/bundle"

	client := func(keepAlive bool) *http.Client {
		cfg := core.TLS(b, cert)
		cfg.VerifyConnection = nil // the bare server has no role checks either; keep the client identical
		return &http.Client{Transport: &http.Transport{TLSClientConfig: cfg, DisableKeepAlives: !keepAlive, MaxIdleConnsPerHost: 64, ForceAttemptHTTP2: true}}
	}
	for _, tc := range []struct {
		name      string
		url       string
		keepAlive bool
	}{
		{"bare/new-connection", bareURL, false},
		{"core/new-connection", url, false},
		{"bare/keep-alive", bareURL, true},
		{"core/keep-alive", url, true},
	} {
		b.Run(tc.name, func(b *testing.B) {
			c := client(tc.keepAlive)
			b.SetBytes(int64(len(bundle)))
			coretest.Load(b, 8, func(int) error {
				resp, err := c.Get(tc.url)
				if err != nil {
					return err
				}
				n, _ := io.Copy(io.Discard, resp.Body)
				_ = resp.Body.Close()
				if resp.StatusCode != http.StatusOK || n != int64(len(bundle)) {
					return fmt.Errorf("status %d, %d bytes", resp.StatusCode, n)
				}
				return nil
			})
		})
	}
}

// BenchmarkRegister measures registrations per second from 64 concurrent
// clients (each a new hardware ID).
func BenchmarkRegister(b *testing.B) {
	core := coretest.Start(b, benchLimits)
	proxy := core.Client(b, core.Proxy(b))
	var n atomic.Int64
	b.SetParallelism(32) // 2 cores x 32 = 64 goroutines
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			hw := fmt.Sprintf("BENCH%011d", n.Add(1))
			if _, _, err := proxy.Register(ctx, coreapi.RegisterRequest{Board: "bbb", HardwareID: hw}); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "registrations/s")
}

// BenchmarkReprovision measures a group-wide change of mutable data for
// 100,000 devices (2,000 with -short): from the admin's request until core
// has built and signed every new bundle and published every notification.
// Meanwhile a device outside the group keeps fetching its own bundle; its
// latency is reported beside the same fetches with core idle.
func BenchmarkReprovision(b *testing.B) {
	n, c, dir, cfgPath := benchFleet(b, *reprovisionDevices, 2000, benchLimits)
	coretest.Populate(b, cfgPath, "default", 0, n)
	bystander := coretest.Populate(b, cfgPath, "line-b", n, 1)[0]
	core := coretest.Run(b, c, cfgPath, dir)
	cert := core.Enrolled(b, bystander, 0)
	hc := core.HTTP(b, cert)
	bundleURL := core.URL + "/v1/devices/" + bystander + "/bundle"
	fetch := func() (time.Duration, error) {
		t0 := time.Now()
		resp, err := hc.Get(bundleURL)
		if err != nil {
			return 0, err
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		_ = resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return 0, fmt.Errorf("fetch: HTTP %d", resp.StatusCode)
		}
		return time.Since(t0), nil
	}
	// fetchWhile samples the bystander's fetch latency until done closes.
	fetchWhile := func(done <-chan struct{}) ([]time.Duration, error) {
		var lat []time.Duration
		for {
			select {
			case <-done:
				return lat, nil
			default:
			}
			var d time.Duration
			var err error
			trace.WithRegion(ctx, "fetch", func() { d, err = fetch() }) // a span to find in a trace (PROV_BENCH_TRACE)
			if err != nil {
				return lat, err
			}
			lat = append(lat, d)
			time.Sleep(2 * time.Millisecond) // pacing the samples, not a wait for anything
		}
	}
	idleDone := make(chan struct{})
	time.AfterFunc(2*time.Second, func() { close(idleDone) })
	idle, err := fetchWhile(idleDone)
	if err != nil {
		b.Fatal(err)
	}
	admin := core.Client(b, core.Admin(b))
	anon := core.HTTP(b, nil)
	var busy []time.Duration
	var elapsed time.Duration
	b.ResetTimer()
	for i := range b.N {
		base := published(b, anon, core.URL)
		g, err := admin.Group(ctx, "default")
		if err != nil {
			b.Fatal(err)
		}
		done := make(chan struct{})
		sampled := make(chan []time.Duration, 1)
		go func() {
			lat, err := fetchWhile(done)
			if err != nil {
				b.Error(err)
			}
			sampled <- lat
		}()
		stopTrace := traceTo(b, os.Getenv("PROV_BENCH_TRACE"))
		stopProfile := cpuProfileTo(b, os.Getenv("PROV_BENCH_CPUPROFILE"))
		t0 := time.Now()
		if _, err := admin.SetGroupData(ctx, "default", g.Version, coreapi.DataChange{Set: map[string]string{"/etc/prov/data/site": fmt.Sprintf("hall-%d\n", i)}}); err != nil {
			b.Fatal(err)
		}
		// At least 1,000 devices a second, or the benchmark fails saying
		// how far it got (the bar is 10,000).
		if err := testenv.WaitFor(time.Minute+time.Duration(n)*time.Millisecond, func() error {
			if got := published(b, anon, core.URL); got < base+float64(n) {
				return fmt.Errorf("%.0f of %d notifications published", got-base, n)
			}
			return nil
		}); err != nil {
			b.Fatal(err)
		}
		elapsed += time.Since(t0)
		stopProfile()
		stopTrace()
		close(done)
		busy = append(busy, <-sampled...)
	}
	b.StopTimer()
	b.ReportMetric(float64(n*b.N)/elapsed.Seconds(), "devices/s")
	b.ReportMetric(float64(n), "devices")
	ip50, ip99 := coretest.Percentiles(idle)
	bp50, bp99 := coretest.Percentiles(busy)
	b.ReportMetric(float64(ip50.Microseconds())/1000, "idle-p50-ms")
	b.ReportMetric(float64(ip99.Microseconds())/1000, "idle-p99-ms")
	b.ReportMetric(float64(bp50.Microseconds())/1000, "busy-p50-ms")
	b.ReportMetric(float64(bp99.Microseconds())/1000, "busy-p99-ms")
}

// traceTo writes an execution trace to path (if not empty) until the
// returned function is called: `go tool trace -pprof=sched` on it shows
// what made a goroutine wait for a CPU in the busy window alone.
func traceTo(b *testing.B, path string) func() {
	return captureTo(b, path, trace.Start, trace.Stop)
}

// cpuProfileTo writes a CPU profile to path (if not empty) until the
// returned function is called: the busy window alone, without the minute
// of filling the store that -cpuprofile would add.
func cpuProfileTo(b *testing.B, path string) func() {
	return captureTo(b, path, pprof.StartCPUProfile, pprof.StopCPUProfile)
}

// captureTo runs start on a new file at path (if not empty) until the
// returned function calls stop and closes it.
func captureTo(b *testing.B, path string, start func(io.Writer) error, stop func()) func() {
	b.Helper()
	if path == "" {
		return func() {}
	}
	f, err := os.Create(path) //nolint:gosec // a path the developer gave
	if err != nil {
		b.Fatal(err)
	}
	if err := start(f); err != nil {
		b.Fatal(err)
	}
	return func() {
		stop()
		if err := f.Close(); err != nil {
			b.Error(err)
		}
	}
}

// published reads core's count of published notifications from /metrics.
func published(tb testing.TB, hc *http.Client, coreURL string) float64 {
	tb.Helper()
	return notificationMetric(tb, hc, coreURL, "published")
}

// notificationMetric reads core's count of notifications with result
// (published, failed, dropped) from its /metrics.
func notificationMetric(tb testing.TB, hc *http.Client, coreURL, result string) float64 {
	tb.Helper()
	return metric(tb, hc, coreURL, `prov_core_notifications_total{result="`+result+`"}`)
}

// metric is the value of one series on core's /metrics (0 if absent).
func metric(tb testing.TB, hc *http.Client, coreURL, series string) float64 {
	tb.Helper()
	resp, err := hc.Get(coreURL + "/metrics") //nolint:noctx // a test
	if err != nil {
		tb.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), series+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				tb.Fatal(err)
			}
			return f
		}
	}
	return 0
}

// BenchmarkStore measures the registry at 1,000,000 devices (5,000 with
// -short; -store-devices for more), each as it is in service: registered,
// its enrollment certificate recorded and seen once (three audit events).
// It reports bytes per device on disk, lookups per second by serial with the
// decoded-record cache off (2 goroutines, random serials), and how long
// core takes from start to serving.
func BenchmarkStore(b *testing.B) {
	n, c, dir, cfgPath := benchFleet(b, *storeDevices, 5000, "")
	t0 := time.Now()
	serials := coretest.Populate(b, cfgPath, "default", 0, n)
	load := time.Since(t0)
	fi, err := os.Stat(filepath.Join(dir, "registry.db"))
	if err != nil {
		b.Fatal(err)
	}
	st, err := store.Open(filepath.Join(dir, "registry.db"), store.Options{CacheDevices: -1})
	if err != nil {
		b.Fatal(err)
	}
	const lookups = 200000
	var next atomic.Int64
	var wg sync.WaitGroup
	t0 = time.Now()
	for w := range 2 {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(w), 1)) //nolint:gosec // which serial to look up
			for next.Add(1) <= lookups {
				if _, err := st.Device(serials[r.IntN(n)]); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	lookupRate := lookups / time.Since(t0).Seconds()
	if err := st.Close(); err != nil {
		b.Fatal(err)
	}
	// b.Loop: the function runs once however many starts are asked for
	// (with a b.N loop, the testing package would call it, and fill the
	// store, once more first).
	var start time.Duration
	starts := 0
	for b.Loop() {
		t0 := time.Now()
		core := coretest.Run(b, c, cfgPath, dir)
		start += time.Since(t0)
		starts++
		core.Stop()
	}
	b.ReportMetric(float64(fi.Size())/float64(n), "bytes/device")
	b.ReportMetric(lookupRate, "lookups/s")
	b.ReportMetric(start.Seconds()/float64(starts), "start-s")
	b.ReportMetric(float64(n)/load.Seconds(), "loads/s")
	b.ReportMetric(float64(n), "devices")
}
