package service_test

import (
	"bytes"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fleetprov/prov/core/contract/coreapi"
	"github.com/fleetprov/prov/core/contract/hwid"
	"github.com/fleetprov/prov/core/contract/imagespec"
	"github.com/fleetprov/prov/core/coretest"
	"github.com/fleetprov/prov/core/store/postgres"
	"github.com/fleetprov/prov/deviceclient/agent"
	"github.com/fleetprov/prov/deviceclient/enroll"
	"github.com/fleetprov/prov/deviceclient/install"
	"github.com/fleetprov/prov/deviceclient/state"
	"github.com/fleetprov/prov/internal/testenv"
	"github.com/fleetprov/prov/internal/testenv/pgtest"
	"github.com/fleetprov/prov/pki/ca/catest"
	"github.com/fleetprov/prov/proxy/proxytest"
)

// The tests of docs/haproxy.md: three real cores on one PostgreSQL
// database, publishing to Mosquitto, behind HAProxy running the page's own
// configuration (coretest.HAProxy reads it from the page).

// replicaNames are the page's server names, each also the replica's core
// identity.
var replicaNames = []string{"core-1", "core-2", "core-3"}

// balanced is three replicas behind HAProxy.
type balanced struct {
	ca       *catest.CA
	replicas []*coretest.Core
	lb       *coretest.Balancer
	mqtt     string // Mosquitto's host:port
}

// startBalanced runs three replicas on one database behind HAProxy; the
// replicas in unready get a broker that refuses connections, so their
// /readyz answers 503 for as long as they run.
func startBalanced(t *testing.T, unready ...int) *balanced {
	t.Helper()
	url := pgtest.New(t, fmt.Sprintf("registry-v%d", postgres.SchemaVersion()), postgres.Migrate)
	c := catest.Shared(t)
	port := coretest.MosquittoFor(t, c, "127.0.0.1", replicaNames...)
	b := &balanced{ca: c, mqtt: fmt.Sprintf("127.0.0.1:%d", port)}
	var addrs []string
	for i, name := range replicaNames {
		brokerPort := port
		for _, u := range unready {
			if u == i {
				brokerPort = testenv.RefusingPort(t)
			}
		}
		dir := t.TempDir()
		cfg := coretest.ReplicaConfig(t, c, dir, name, fmt.Sprintf("store: {engine: postgres, url: %q}\n", url)+
			fmt.Sprintf("mqtt: {embedded: {listen: \"\"}, external: {url: \"tls://localhost:%d\"}}\n", brokerPort))
		core := coretest.Run(t, c, cfg, dir)
		b.replicas = append(b.replicas, core)
		addrs = append(addrs, strings.TrimPrefix(core.URL, "https://"))
	}
	b.lb = coretest.HAProxy(t, c, addrs...)
	return b
}

// front is core as a client of the balancer sees it: the balancer's URL.
func (b *balanced) front() *coretest.Core {
	return &coretest.Core{CA: b.ca, URL: b.lb.URL, MQTTAddr: b.mqtt}
}

// enrollThrough enrolls a board through a real proxy whose core is the
// balancer, as prov-device enroll does, and returns its state directory.
func (b *balanced) enrollThrough(t *testing.T, raw string) *state.Dir {
	t.Helper()
	proxy := proxytest.StartWith(t, b.front(), "", "networks: [\"127.0.0.0/8\"]\n")
	id, err := hwid.Parse("bbb", raw)
	if err != nil {
		t.Fatal(err)
	}
	rootPEM, err := os.ReadFile(b.ca.RootCert())
	if err != nil {
		t.Fatal(err)
	}
	st, err := state.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	dev, _, err := enroll.Enroll(ctx, st, enroll.Options{ProxyURL: proxy.URL, RootPEM: rootPEM, ID: id,
		Install: install.Options{Rules: imagespec.DefaultRules()}})
	if err != nil {
		t.Fatalf("enroll through the balancer: %v", err)
	}
	if dev.CoreURL != b.lb.URL {
		t.Fatalf("the device was told core is at %s, want the balancer %s", dev.CoreURL, b.lb.URL)
	}
	return st
}

// deviceAgent is the device's field agent, fetching from the balancer.
func deviceAgent(t *testing.T, st *state.Dir) *agent.Agent {
	t.Helper()
	a, err := agent.New(st, agent.Options{Install: install.Options{Rules: imagespec.DefaultRules()},
		Log: slog.New(slog.DiscardHandler), Notify: func(string) error { return nil }})
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// installedBundle is the bundle the device made current.
func installedBundle(t *testing.T, st *state.Dir) []byte {
	t.Helper()
	img, ok, err := st.Pointer(state.Current)
	if err != nil || !ok {
		t.Fatalf("no current image: %v", err)
	}
	data, err := os.ReadFile(img.Path)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// fetch fetches the device's bundle through the balancer n times with its
// own certificate, each on a new connection (HAProxy balances
// connections), and fails unless each is want, byte for byte.
func (b *balanced) fetch(t *testing.T, st *state.Dir, want []byte, n int) {
	t.Helper()
	kp, err := st.Identity()
	if err != nil {
		t.Fatal(err)
	}
	dev, err := st.Device()
	if err != nil {
		t.Fatal(err)
	}
	for i := range n {
		cfg := b.front().TLS(t, kp.Certificate())
		hc := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: cfg, DisableKeepAlives: true}}
		cl, err := coreapi.NewClient(b.lb.URL, hc)
		if err != nil {
			t.Fatal(err)
		}
		body, _, err := cl.Bundle(ctx, dev.Serial, "")
		if err != nil {
			t.Fatalf("fetch %d through the balancer: %v", i, err)
		}
		got, err := io.ReadAll(body)
		_ = body.Close()
		if err != nil {
			t.Fatalf("fetch %d through the balancer: %v", i, err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("fetch %d through the balancer: %d bytes differ from the %d installed", i, len(got), len(want))
		}
	}
}

// served is how many bundles a replica has answered with 200.
func (b *balanced) served(t *testing.T, i int) float64 {
	t.Helper()
	r := b.replicas[i]
	// As an admin: an anonymous caller shares its address's budget
	// (TestHAProxyChecksSurviveAnAnonymousFlood spends it).
	return metric(t, r.HTTP(t, r.Admin(t)), r.URL, `prov_core_requests_total{route="bundle",status="2xx"}`)
}

// Issue 15, Deliver 3: a device enrolls through a proxy whose core is the
// balancer and fetches through it with its own certificate (mutual TLS
// ends at the replica); whichever replica answers, the bundle is the same,
// byte for byte, before and after a change; each replica served some. A
// replica stopped is taken out by its failing /readyz check, and no
// request fails meanwhile (HAProxy redispatches a refused connection).
func TestHAProxyInFrontOfReplicas(t *testing.T) {
	b := startBalanced(t)
	b.lb.WaitStatus(t, "UP", replicaNames...)
	st := b.enrollThrough(t, "1813BBBK0151")
	a := deviceAgent(t, st)
	if res, err := a.Update(ctx); err != nil || res != nil {
		t.Fatalf("the first update through the balancer: %+v, %v; want not modified", res, err)
	}
	b.fetch(t, st, installedBundle(t, st), 6)

	// A change through the balancer; the agent installs it from whichever
	// replica it reaches, and every replica serves the same bytes.
	dev, err := st.Device()
	if err != nil {
		t.Fatal(err)
	}
	admin := b.front().Client(t, b.front().Admin(t))
	d, err := admin.Device(ctx, dev.Serial)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := admin.SetDeviceData(ctx, dev.Serial, d.Generation, coreapi.DataChange{Set: map[string]string{"/etc/prov/data/site": "lb\n"}}); err != nil {
		t.Fatal(err)
	}
	res, err := a.Update(ctx)
	if err != nil || res == nil || res.Generation != d.Generation+1 {
		t.Fatalf("update after the change: %+v, %v; want generation %d", res, err, d.Generation+1)
	}
	bundle := installedBundle(t, st)
	b.fetch(t, st, bundle, 6)
	for i := range b.replicas {
		if n := b.served(t, i); n == 0 {
			t.Errorf("replica %s served no bundle; HAProxy: %+v", replicaNames[i], b.servers(t))
		}
	}

	// core-2 stops: requests keep succeeding while HAProxy notices, and
	// after; it is marked down through its check.
	b.replicas[1].Stop()
	b.fetch(t, st, bundle, 6)
	b.lb.WaitStatus(t, "DOWN", "core-2")
	b.lb.WaitStatus(t, "UP", "core-1", "core-3")
	before := b.server(t, "core-2").Sessions
	b.fetch(t, st, bundle, 6)
	if s := b.server(t, "core-2"); s.Sessions != before || s.CheckStatus != "L4CON" {
		t.Fatalf("core-2, stopped: %+v; want no new connection (had %d) and a refused check (L4CON)", s, before)
	}
}

// Issue 15, Deliver 3: a replica whose /readyz answers 503 (its broker
// refuses it) is never put in: HAProxy's check reads the status (L7STS),
// not merely an open port, and the replica gets no connection while the
// others serve.
func TestHAProxyUnreadyReplicaGetsNoTraffic(t *testing.T) {
	b := startBalanced(t, 2)
	b.lb.WaitStatus(t, "UP", "core-1", "core-2")
	b.lb.WaitStatus(t, "DOWN", "core-3")
	resp, err := b.replicas[2].HTTP(t, nil).Get(b.replicas[2].URL + coreapi.RouteReadyz.Path) //nolint:noctx // a test
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("core-3's /readyz: %d, want 503", resp.StatusCode)
	}
	st := b.enrollThrough(t, "1813BBBK0152")
	b.fetch(t, st, installedBundle(t, st), 9)
	s := b.server(t, "core-3")
	if s.Sessions != 0 || s.CheckStatus != "L7STS" || s.Status != "DOWN" {
		t.Fatalf("core-3 (readyz 503): %+v; want DOWN by its status (L7STS) and no connection", s)
	}
	if n := b.served(t, 2); n != 0 {
		t.Fatalf("core-3 (readyz 503) served %v bundles", n)
	}
}

// Issue 15, Deliver 3 (a finding): core limits callers without a client
// certificate per source address, and behind the balancer every such
// caller has the balancer's address, its health checks' too. With the
// checks anonymous, a flood of anonymous requests through the balancer got
// the checks 429 and HAProxy took every replica out; the page's checks
// present HAProxy's own identity, so they keep their own budget: through
// the flood every check passes and every replica stays in.
func TestHAProxyChecksSurviveAnAnonymousFlood(t *testing.T) {
	b := startBalanced(t)
	b.lb.WaitStatus(t, "UP", replicaNames...)
	fails := map[string]int{}
	for name, s := range b.servers(t) {
		fails[name] = s.CheckFails
	}
	readyz := func(i int, class string) float64 {
		r := b.replicas[i]
		return metric(t, r.HTTP(t, r.Admin(t)), r.URL, `prov_core_requests_total{route="readyz",status="`+class+`"}`)
	}
	var checks0 []float64
	for i := range b.replicas {
		checks0 = append(checks0, readyz(i, "2xx"))
	}

	// Anonymous clients through the balancer, one connection each (so
	// HAProxy spreads them over the replicas), as fast as they can.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var mu sync.Mutex
	limited := 0
	for range 6 {
		hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: b.front().TLS(t, nil)}}
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				resp, err := hc.Get(b.lb.URL + coreapi.RouteHealthz.Path) //nolint:noctx // a test
				if err != nil {
					continue
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				_ = resp.Body.Close()
				if resp.StatusCode == http.StatusTooManyRequests {
					mu.Lock()
					limited++
					mu.Unlock()
				}
			}
		})
	}
	// Three more checks answered by each replica while flooded.
	err := testenv.WaitFor(60*time.Second, func() error {
		servers, err := b.lb.Servers()
		if err != nil {
			return err
		}
		for name, s := range servers {
			if s.CheckFails != fails[name] {
				return testenv.Final(fmt.Errorf("HAProxy's check of %s failed during the flood: %+v", name, s))
			}
		}
		for i := range b.replicas {
			if n := readyz(i, "2xx") - checks0[i]; n < 3 {
				return fmt.Errorf("%s answered %v checks during the flood", replicaNames[i], n)
			}
		}
		return nil
	})
	close(stop)
	wg.Wait()
	if err != nil {
		t.Fatal(err)
	}
	if limited == 0 {
		t.Fatal("no anonymous request was limited: the flood did not reach core's limit")
	}
	for i, name := range replicaNames {
		s := b.server(t, name)
		if s.Status != "UP" || s.CheckFails != fails[name] {
			t.Errorf("%s after the flood: %+v, want UP with %d failed checks", name, s, fails[name])
		}
		if n := readyz(i, "4xx"); n != 0 {
			t.Errorf("%s refused %v health checks (429)", name, n)
		}
	}
	t.Logf("anonymous requests limited during the flood: %d", limited)
}

// server is one replica as HAProxy sees it.
func (b *balanced) server(t *testing.T, name string) coretest.Server {
	t.Helper()
	s, err := b.lb.Server(name)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// servers are the replicas as HAProxy sees them.
func (b *balanced) servers(t *testing.T) map[string]coretest.Server {
	t.Helper()
	s, err := b.lb.Servers()
	if err != nil {
		t.Fatal(err)
	}
	return s
}
