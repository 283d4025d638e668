package service_test

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fleetprov/prov/core/coretest"
	"github.com/fleetprov/prov/core/store/postgres"
	"github.com/fleetprov/prov/internal/cmdline"
	"github.com/fleetprov/prov/internal/testenv"
	"github.com/fleetprov/prov/internal/testenv/pgtest"
	"github.com/fleetprov/prov/pki"
	"github.com/fleetprov/prov/pki/ca/catest"
	"github.com/fleetprov/prov/pki/token"
	"github.com/fleetprov/prov/proxy/status"
)

var benchRun atomic.Int64

// BenchmarkEnroll measures enrollments end to end (a device-side load
// generator, a new TLS connection per device, -> proxy -> core -> step-ca
// -> core -> answer) at concurrency 1, 16 and 64, beside step-ca's
// /1.0/sign alone (token + CSR, pooled connections), in one run.
//
// The garbage collector is tuned as prov-proxy and prov-core serve tune it.
func BenchmarkEnroll(b *testing.B) {
	cmdline.TuneServerGC()
	e := startWith(b, "limits: {proxy: {rate: 100000, burst: 100000}}\n", local+"rate: 100000\nburst: 100000\n")
	c := catest.Shared(b)
	prov, err := c.ProxyProvisioner(catest.Proxy)
	if err != nil {
		b.Fatal(err)
	}
	csrs := make(chan *x509.CertificateRequest, 256)
	go func() {
		for {
			k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
			der, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, k)
			csr, _ := x509.ParseCertificateRequest(der)
			csrs <- csr
		}
	}()
	// The same with core's registry on PostgreSQL (one core, the test
	// cluster syncing every commit as bbolt does), at concurrency 16.
	pg := func(b *testing.B) *env {
		url := pgtest.New(b, fmt.Sprintf("registry-v%d", postgres.SchemaVersion()), postgres.Migrate)
		pgtest.Durable(b)
		return startWith(b, fmt.Sprintf("limits: {proxy: {rate: 100000, burst: 100000}}\nstore: {engine: postgres, url: %q, singleCore: true}\n", url),
			local+"rate: 100000\nburst: 100000\n")
	}
	for _, conc := range []int{1, 16, 64} {
		b.Run(fmt.Sprintf("stepca-sign/c=%d", conc), func(b *testing.B) {
			coretest.Load(b, conc, func(int) error {
				csr := <-csrs
				serial := fmt.Sprintf("%010x", benchRun.Add(1))
				tok, err := prov.SignToken(token.SignRequest{Audience: c.Client.SignAudience(), Subject: serial,
					SANs: []string{"spiffe://" + c.TrustDomain + "/device/" + serial}, CSR: csr}, time.Now())
				if err != nil {
					return err
				}
				_, err = c.Client.Sign(ctx, csr, tok)
				return err
			})
		})
		b.Run(fmt.Sprintf("enroll/c=%d", conc), func(b *testing.B) { enrollLoad(b, e, conc) })
		if conc <= 16 {
			b.Run(fmt.Sprintf("enroll-consoles=%d/c=%d", benchConsoles, conc), func(b *testing.B) {
				stop := watchConsoles(b, e, benchConsoles)
				enrollLoad(b, e, conc)
				stop()
			})
		}
	}
	b.Run("enroll-postgres/c=16", func(b *testing.B) { enrollLoad(b, pg(b), 16) })
}

// benchConsoles is how many factory consoles watch the line in the
// enroll-consoles runs: one per station and the shift lead's, a busy line.
const benchConsoles = 10

// watchConsoles opens n event streams (GET /console/events) on e's proxy,
// each over its own TLS connection as n browsers would, and reads them
// the way the page does (every attempt's JSON decoded). The streams are
// subscribed when it returns (the proxy subscribes before it answers).
// stop waits for each console to have every attempt of the run (the feed
// never waits, so this is the delivery lag, not a pause of the
// enrollments), closes the streams and reports the record-to-console
// latency (a record's time is when it was written) and how many streams
// the feed dropped.
func watchConsoles(b *testing.B, e *env, n int) (stop func()) {
	b.Helper()
	sctx, cancel := context.WithCancel(ctx)
	var (
		mu      sync.Mutex
		lags    []time.Duration
		dropped atomic.Int64
		got     = make([]atomic.Int64, n)
		done    sync.WaitGroup
	)
	for i := range n {
		hc := &http.Client{Transport: &http.Transport{TLSClientConfig: pki.ClientTLSConfig(nil, e.roots, pki.ClientOptions{ServerRoles: []pki.Role{pki.RoleProxy}})}}
		r, err := http.NewRequestWithContext(sctx, http.MethodGet, e.url+"/console/events", nil)
		if err != nil {
			b.Fatal(err)
		}
		resp, err := hc.Do(r)
		if err != nil {
			b.Fatalf("console %d: %v", i, err)
		}
		if resp.StatusCode != http.StatusOK {
			b.Fatalf("console %d: %s", i, resp.Status)
		}
		done.Go(func() {
			defer func() { _ = resp.Body.Close() }()
			sc := bufio.NewScanner(resp.Body)
			for sc.Scan() {
				data, ok := strings.CutPrefix(sc.Text(), "data: ")
				if !ok {
					continue
				}
				var a status.Attempt
				if json.Unmarshal([]byte(data), &a) != nil {
					continue
				}
				lag := time.Since(a.Time)
				mu.Lock()
				lags = append(lags, lag)
				mu.Unlock()
				got[i].Add(1)
			}
			if sctx.Err() == nil {
				dropped.Add(1) // the proxy ended it: the feed dropped it
			}
		})
	}
	return func() {
		b.Helper()
		err := testenv.WaitFor(30*time.Second, func() error {
			for i := range got {
				if g := got[i].Load(); g < int64(b.N) && dropped.Load() == 0 {
					return fmt.Errorf("console %d has %d of %d attempts", i, g, b.N)
				}
			}
			return nil
		})
		cancel()
		done.Wait()
		if err != nil {
			b.Error(err)
		}
		slices.Sort(lags)
		if len(lags) > 0 {
			b.ReportMetric(ms(lags[len(lags)/2]), "feed-p50-ms")
			b.ReportMetric(ms(lags[(len(lags)-1)*95/100]), "feed-p95-ms")
			b.ReportMetric(ms(lags[len(lags)-1]), "feed-max-ms")
		}
		b.ReportMetric(float64(dropped.Load()), "dropped")
	}
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// enrollLoad enrolls b.N new devices through e at concurrency conc.
func enrollLoad(b *testing.B, e *env, conc int) {
	devs := make([]*device, b.N)
	for i := range devs {
		devs[i] = newDevice(b)
	}
	base := benchRun.Add(int64(b.N)) - int64(b.N) // IDs base .. base+N-1
	coretest.Load(b, conc, func(i int) error {
		code, _, ae := e.enroll(b, req("bbb", fmt.Sprintf("BENCH%011d", base+int64(i)), devs[i]))
		if code != 200 {
			return fmt.Errorf("enroll %d of %d (BENCH%011d): %d %+v", i, b.N, base+int64(i), code, ae)
		}
		return nil
	})
}
