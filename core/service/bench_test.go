package service_test

import (
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fleetprov/prov/core/api"
	"github.com/fleetprov/prov/core/coretest"
	"github.com/fleetprov/prov/pki"
)

const benchLimits = "limits: {device: {rate: 1000000, burst: 1000000}, proxy: {rate: 1000000, burst: 1000000}}\n"

// BenchmarkFetch measures image fetches from core over mTLS, with a new
// connection (full handshake) per fetch and with keep-alive, beside a bare
// Go mTLS server that returns the same bytes, with the same client and
// certificates, in one run. Compare ns/op of core/* with bare/*.
func BenchmarkFetch(b *testing.B) {
	core := coretest.Start(b, benchLimits)
	d := core.Register(b, "rpi4", coretest.RPi4(900))
	cert := coretest.DeviceCert(b, core.CA, d.Serial, 0)
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
		w.Header().Set("Content-Type", api.MediaTypeBundle)
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
			b.SetParallelism(8)
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					resp, err := c.Get(tc.url)
					if err != nil {
						b.Error(err)
						return
					}
					n, _ := io.Copy(io.Discard, resp.Body)
					_ = resp.Body.Close()
					if resp.StatusCode != http.StatusOK || n != int64(len(bundle)) {
						b.Errorf("status %d, %d bytes", resp.StatusCode, n)
						return
					}
				}
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
			if _, _, err := proxy.Register(ctx, api.RegisterRequest{Board: "bbb", HardwareID: hw}); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "registrations/s")
}
