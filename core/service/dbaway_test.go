package service_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/time/rate"

	"github.com/fleetprov/prov/core/contract/coreapi"
	"github.com/fleetprov/prov/core/contract/hwid"
	"github.com/fleetprov/prov/core/coretest"
	"github.com/fleetprov/prov/core/store"
	"github.com/fleetprov/prov/core/store/postgres"
	"github.com/fleetprov/prov/internal/testenv"
	"github.com/fleetprov/prov/internal/testenv/pgtest"
	"github.com/fleetprov/prov/pki/ca/catest"
)

// dbPassword is in the database URL (the test cluster trusts local
// connections and ignores it): no answer and no error may show it.
const dbPassword = "pw-that-must-not-leak"

// traffic is what registrations and fetches running on goroutines saw.
type traffic struct {
	mu     sync.Mutex
	acked  map[string]string // hardware ID -> serial, for every 200/201
	tried  map[string]bool   // every hardware ID sent
	ok     atomic.Int64      // answers 2xx, registrations and fetches
	away   atomic.Int64      // answers 503 unavailable with Retry-After
	others []string          // anything else
}

func (tr *traffic) outcome(what string, err error) {
	var se *coreapi.StatusError
	switch {
	case err == nil:
		tr.ok.Add(1)
	case errors.As(err, &se) && se.Status == http.StatusServiceUnavailable && se.Body.Code == coreapi.CodeUnavailable && se.RetryAfter != "" &&
		!strings.Contains(se.Body.Message, dbPassword) && !strings.Contains(se.Body.Message, "postgres"):
		tr.away.Add(1)
	default:
		tr.mu.Lock()
		tr.others = append(tr.others, fmt.Sprintf("%s: %v", what, err))
		tr.mu.Unlock()
	}
}

// docs/operations.md's database away: a core on PostgreSQL whose database
// crashes (pg_ctl stop -m immediate) and comes back while registrations
// and fetches run. While it is away /readyz answers 503 not_ready naming
// the database, and every request that needs the store 503 unavailable
// with Retry-After, showing neither the URL nor its password; once it is
// back core serves again by itself (no restart), and every registration
// it acknowledged is there, each hardware ID once.
//
// It stops the cluster the tests of this binary share: it runs alone
// (no t.Parallel here or in this package).
func TestDatabaseAway(t *testing.T) {
	u, err := url.Parse(pgtest.New(t, fmt.Sprintf("registry-v%d", postgres.SchemaVersion()), postgres.Migrate))
	if err != nil {
		t.Fatal(err)
	}
	u.User = url.UserPassword(u.User.Username(), dbPassword)
	dbURL := u.String()
	c := catest.Shared(t)
	dir := t.TempDir()
	core := coretest.Run(t, c, coretest.Config(t, c.Deployment, dir, fmt.Sprintf("store: {engine: postgres, url: %q, singleCore: true}\n", dbURL)), dir)
	var fetched []string
	for i := range 3 {
		fetched = append(fetched, core.Register(t, "rpi4", coretest.RPi4(0xd00+i)).Serial)
	}
	proxy := core.Client(t, core.Proxy(t))
	tr := &traffic{acked: map[string]string{}, tried: map[string]bool{}}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var next atomic.Int64
	for range 3 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				hw := coretest.RPi4(0xe0000 + int(next.Add(1)))
				tr.mu.Lock()
				tr.tried[hw] = true
				tr.mu.Unlock()
				d, _, err := proxy.Register(context.Background(), coreapi.RegisterRequest{Board: "rpi4", HardwareID: hw})
				if err == nil {
					tr.mu.Lock()
					tr.acked[hw] = d.Serial
					tr.mu.Unlock()
				}
				tr.outcome("register "+hw, err)
			}
		})
	}
	wg.Go(func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			body, _, err := proxy.Bundle(context.Background(), fetched[i%len(fetched)], "")
			if err == nil {
				_, err = io.Copy(io.Discard, body)
				_ = body.Close()
			}
			tr.outcome("fetch "+fetched[i%len(fetched)], err)
		}
	})
	defer func() {
		select {
		case <-stop:
		default:
			close(stop)
		}
		wg.Wait()
	}()

	obs := &readiness{hc: core.HTTP(t, nil), url: core.URL + "/readyz", pace: rate.NewLimiter(5, 1)}
	waitOK := func(what string, n int64) {
		t.Helper()
		from := tr.ok.Load()
		if err := testenv.WaitFor(60*time.Second, func() error {
			if got := tr.ok.Load() - from; got < n {
				return fmt.Errorf("%d answers 2xx %s, want %d", got, what, n)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	waitOK("before the crash", 50)

	pgtest.Stop(t)
	if err := testenv.WaitFor(30*time.Second, func() error {
		status, body, err := obs.get()
		if err != nil {
			return err
		}
		if status != http.StatusServiceUnavailable || body.Code != coreapi.CodeNotReady || !strings.Contains(body.Message, "database") {
			return fmt.Errorf("readyz with the database away: %d %+v", status, body)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	from := tr.away.Load()
	if err := testenv.WaitFor(30*time.Second, func() error {
		if got := tr.away.Load() - from; got < 20 {
			return fmt.Errorf("%d answers 503 with Retry-After while away", got)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	// pgx's own error texts (what core logs as the cause) name the user,
	// database and socket, never the password.
	if _, err := postgres.Open(context.Background(), dbURL, postgres.Options{}); err == nil || !errors.Is(err, store.ErrUnavailable) || strings.Contains(err.Error(), dbPassword) {
		t.Fatalf("opening the store with the database away: %v", err)
	}
	okAway := tr.ok.Load()

	pgtest.Start(t)
	if err := testenv.WaitFor(30*time.Second, func() error {
		status, body, err := obs.get()
		if err != nil {
			return err
		}
		if status != http.StatusOK {
			return fmt.Errorf("readyz with the database back: %d %+v", status, body)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	waitOK("after the database came back", 50)
	close(stop)
	wg.Wait()

	if len(tr.others) > 0 {
		t.Fatalf("%d answers neither 2xx nor 503 with Retry-After, the first: %s", len(tr.others), tr.others[0])
	}
	// Every acknowledged registration is there, once; what was not
	// acknowledged (cut by the crash) may or may not be, once.
	admin := core.Client(t, core.Admin(t))
	listed := map[string]bool{}
	after := ""
	for {
		page, err := admin.List(context.Background(), after, 1000)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range page.Devices {
			if listed[d.Serial] {
				t.Errorf("device %s listed twice", d.Serial)
			}
			listed[d.Serial] = true
		}
		if after = page.Next; after == "" {
			break
		}
	}
	possible := map[string]bool{}
	for hw := range tr.tried {
		id, err := hwid.Parse("rpi4", hw)
		if err != nil {
			t.Fatal(err)
		}
		possible[id.Serial()] = true
	}
	for _, s := range fetched {
		possible[s] = true
	}
	for serial := range listed {
		if !possible[serial] {
			t.Errorf("device %s: no registration made it", serial)
		}
	}
	for hw, serial := range tr.acked {
		if !listed[serial] {
			t.Errorf("registration of %s acknowledged as %s, missing after the crash", hw, serial)
		}
		d, created, err := proxy.Register(context.Background(), coreapi.RegisterRequest{Board: "rpi4", HardwareID: hw})
		if err != nil || created || d.Serial != serial {
			t.Errorf("%s registered again: %+v created %v %v; was %s", hw, d, created, err, serial)
		}
	}
	t.Logf("%d registrations tried, %d acknowledged (all present, none twice), %d devices; %d answers 503 with Retry-After while away; %d 2xx during the outage (before the first failed requests)",
		len(tr.tried), len(tr.acked), len(listed), tr.away.Load(), okAway)
}

// readiness reads /readyz as a load balancer would, at a pace under the
// limit for callers without a certificate.
type readiness struct {
	hc   *http.Client
	url  string
	pace *rate.Limiter
}

func (o *readiness) get() (int, coreapi.Error, error) {
	var body coreapi.Error
	if err := o.pace.Wait(context.Background()); err != nil {
		return 0, body, err
	}
	resp, err := o.hc.Get(o.url) //nolint:noctx // a test
	if err != nil {
		return 0, body, err
	}
	defer func() { _ = resp.Body.Close() }()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, body, err
	}
	if strings.Contains(string(b), dbPassword) || strings.Contains(string(b), "postgres://") {
		return 0, body, testenv.Final(fmt.Errorf("readyz shows the database URL: %s", b))
	}
	if resp.StatusCode != http.StatusOK {
		_ = json.Unmarshal(b, &body)
	}
	return resp.StatusCode, body, nil
}
