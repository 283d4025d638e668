package service_test

import (
	"fmt"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/fleetprov/prov/core/config"
	"github.com/fleetprov/prov/core/contract/coreapi"
	"github.com/fleetprov/prov/core/coretest"
	"github.com/fleetprov/prov/internal/testenv/pgtest"
)

// BenchmarkReplicas measures registrations/s (64 clients, each a new
// hardware ID) and bundle fetches/s (8 clients, keep-alive, mTLS) of
// cores on bbolt and on PostgreSQL behind 1, 2 and 3 replicas, side by
// side in one run, every core in this process publishing to one
// Mosquitto, clients spread over the replicas as a balancer would. The
// PostgreSQL cluster syncs every commit (pgtest.Durable), as bbolt does.
// On 2 CPUs the replicas share the same CPUs: the rows give the cost
// ratio of the engines, not scaling.
func BenchmarkReplicas(b *testing.B) {
	for _, setup := range []struct {
		engine string
		n      int
	}{{config.EngineBolt, 1}, {config.EnginePostgres, 1}, {config.EnginePostgres, 2}, {config.EnginePostgres, 3}} {
		name := fmt.Sprintf("%s/%d", setup.engine, setup.n)
		b.Run(name+"/register", func(b *testing.B) {
			rs := newCores(b, setup.n, setup.engine)
			if setup.engine == config.EnginePostgres {
				pgtest.Durable(b)
			}
			cores := rs.run(b)
			proxies := make([]*coreapi.Client, len(cores))
			for i, core := range cores {
				proxies[i] = core.Client(b, core.Proxy(b))
			}
			coretest.Load(b, 64, func(i int) error {
				_, _, err := proxies[i%len(proxies)].Register(ctx, coreapi.RegisterRequest{Board: "bbb", HardwareID: fmt.Sprintf("BENCH%011d", i)})
				return err
			})
		})
		b.Run(name+"/fetch", func(b *testing.B) {
			rs := newCores(b, setup.n, setup.engine)
			if setup.engine == config.EnginePostgres {
				pgtest.Durable(b)
			}
			cores := rs.run(b)
			d := cores[0].Register(b, "rpi4", coretest.RPi4(901))
			cert := cores[0].Enrolled(b, d.Serial, 0)
			clients := make([]*http.Client, len(cores))
			for i, core := range cores {
				clients[i] = core.HTTP(b, cert)
				clients[i].Transport.(*http.Transport).MaxIdleConnsPerHost = 64 //nolint:errcheck,forcetypeassert // coretest's client
			}
			coretest.Load(b, 8, func(i int) error {
				resp, err := clients[i%len(clients)].Get(cores[i%len(cores)].URL + "/v1/devices/" + d.Serial + "/bundle")
				if err != nil {
					return err
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				_ = resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					return fmt.Errorf("status %d", resp.StatusCode)
				}
				return nil
			})
		})
	}
}

// BenchmarkReplicaGroupChange measures a group change of 100,000 members
// (2,000 with -short; -reprovision-devices) across three cores on one
// PostgreSQL database: from the admin's request at one core until the
// outbox is empty, that is until every member's bundle was built and its
// notification acknowledged by Mosquitto (a job is deleted only then).
// Goal: 10,000 devices/s. (TestKill9AReplicaDuringAGroupChange checks
// that each notification arrives.)
func BenchmarkReplicaGroupChange(b *testing.B) {
	n := *reprovisionDevices
	if testing.Short() {
		n = 2000
	}
	for range b.N {
		b.StopTimer()
		rs := newReplicaSet(b, 3)
		coretest.PopulateRegistered(b, rs.cfgs[0], "default", 0, n)
		cores := rs.run(b)
		if err := rs.jobsDone(b, 10*time.Minute); err != nil {
			b.Fatal(err)
		}
		admin := cores[0].Client(b, cores[0].Admin(b))
		g, err := admin.Group(ctx, "default")
		if err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		started := time.Now()
		if _, err := admin.SetGroupData(ctx, "default", g.Version, coreapi.DataChange{Set: map[string]string{"/etc/prov/data/g": "2"}}); err != nil {
			b.Fatal(err)
		}
		for rs.jobsLeft(b) > 0 {
			if time.Since(started) > 10*time.Minute {
				b.Fatalf("jobs left after 10 minutes: %s", rs.jobsSummary(b))
			}
			time.Sleep(10 * time.Millisecond) // polling the outbox, not waiting for time to pass
		}
		elapsed := time.Since(started)
		b.StopTimer()
		b.ReportMetric(float64(n), "devices")
		b.ReportMetric(float64(n)/elapsed.Seconds(), "devices/s")
		for _, c := range cores {
			c.Stop()
		}
	}
}
