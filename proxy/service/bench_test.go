package service_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fleetprov/prov/core/coretest"
	"github.com/fleetprov/prov/core/store/postgres"
	"github.com/fleetprov/prov/internal/cmdline"
	"github.com/fleetprov/prov/internal/testenv/pgtest"
	"github.com/fleetprov/prov/pki/ca/catest"
	"github.com/fleetprov/prov/pki/token"
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
	}
	b.Run("enroll-postgres/c=16", func(b *testing.B) { enrollLoad(b, pg(b), 16) })
}

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
