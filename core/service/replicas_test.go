package service_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/packets"
	"github.com/jackc/pgx/v5"

	"github.com/fleetprov/prov/core/config"
	"github.com/fleetprov/prov/core/contract/coreapi"
	"github.com/fleetprov/prov/core/coretest"
	"github.com/fleetprov/prov/core/store/postgres"
	"github.com/fleetprov/prov/internal/testenv"
	"github.com/fleetprov/prov/internal/testenv/pgtest"
	"github.com/fleetprov/prov/pki"
	"github.com/fleetprov/prov/pki/ca/catest"
)

// replicaSet is n cores' configurations on one PostgreSQL database, each
// with its own core identity (core-1, core-2, …) publishing to one
// Mosquitto, as docs/operations.md says to run several cores.
type replicaSet struct {
	c    *catest.CA
	db   string   // the database's connection string
	addr string   // Mosquitto's host:port
	cfgs []string // each replica's configuration file
	dirs []string
}

func newReplicaSet(t testing.TB, n int) *replicaSet {
	t.Helper()
	return newCores(t, n, config.EnginePostgres)
}

// newCores is newReplicaSet on an engine: on bbolt, one core (a bbolt
// file has one) publishing to Mosquitto as well.
func newCores(t testing.TB, n int, engine string) *replicaSet {
	t.Helper()
	c := catest.Shared(t)
	rs := &replicaSet{c: c}
	storeYAML := ""
	if engine == config.EnginePostgres {
		rs.db = pgtest.New(t, fmt.Sprintf("registry-v%d", postgres.SchemaVersion()), postgres.Migrate)
		storeYAML = fmt.Sprintf("store: {engine: postgres, url: %q}\n", rs.db)
	} else if n != 1 {
		t.Fatalf("%d cores on one bbolt file", n)
	}
	var names []string
	for i := range n {
		names = append(names, fmt.Sprintf("core-%d", i+1))
	}
	port := coretest.MosquittoObserved(t, c, "127.0.0.1", "observer", names...)
	rs.addr = fmt.Sprintf("127.0.0.1:%d", port)
	for _, name := range names {
		dir := t.TempDir()
		rs.dirs = append(rs.dirs, dir)
		rs.cfgs = append(rs.cfgs, coretest.ReplicaConfig(t, c, dir, name, fmt.Sprintf(`%smqtt: {embedded: {listen: ""}, external: {url: "tls://localhost:%d", clientId: %q}}
rollouts: {tick: 100ms}
%s`, storeYAML, port, name, benchLimits)))
	}
	return rs
}

// run starts every replica in this process.
func (rs *replicaSet) run(t testing.TB) []*coretest.Core {
	t.Helper()
	var cores []*coretest.Core
	for i, cfg := range rs.cfgs {
		cores = append(cores, coretest.Run(t, rs.c, cfg, rs.dirs[i]))
	}
	return cores
}

// notified is every notification Mosquitto delivers (QoS 0: Mosquitto
// queues no QoS 0 message for a connected client, so a burst of
// thousands is not cut at its queue's limit).
type notified struct {
	mu   sync.Mutex
	gens map[string][]uint64 // serial -> the generations notified, in order
	err  error
}

func (rs *replicaSet) observe(t testing.TB) *notified {
	t.Helper()
	kp, err := pki.LoadKeyPair(rs.c.IdentityCert(pki.RoleCore, "observer"), rs.c.IdentityKey(pki.RoleCore, "observer"))
	if err != nil {
		t.Fatal(err)
	}
	m, code, err := dialRaw(rs.addr, deviceTLS(t, rs.c, kp.Certificate()), "observer")
	if err != nil || code != 0 {
		t.Fatalf("observer to the broker: %v, CONNACK %#x", err, code)
	}
	t.Cleanup(m.close)
	sub := &packets.Subscribe{PacketID: m.nextID(), Properties: &packets.Properties{}, Subscriptions: []packets.SubOptions{{Topic: coreapi.TopicPrefix + "+", QoS: 0}}}
	if _, err := m.ask(sub, packets.SUBACK); err != nil {
		t.Fatal(err)
	}
	o := &notified{gens: map[string][]uint64{}}
	o.add(m.got)
	if err := m.conn.SetReadDeadline(time.Time{}); err != nil { // ask's; the reader waits as long as the test
		t.Fatal(err)
	}
	go func() {
		for {
			p, err := packets.ReadPacket(m.conn)
			if err != nil {
				o.mu.Lock()
				o.err = err
				o.mu.Unlock()
				return
			}
			if pub, ok := p.Content.(*packets.Publish); ok {
				o.add([]*packets.Publish{pub})
			}
		}
	}()
	return o
}

func (o *notified) add(pubs []*packets.Publish) {
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, p := range pubs {
		var n coreapi.Notification
		if err := json.Unmarshal(p.Payload, &n); err != nil || p.Topic != coreapi.DeviceTopic(n.Serial) {
			o.err = fmt.Errorf("notification %q on %s: %w", p.Payload, p.Topic, err)
			continue
		}
		o.gens[n.Serial] = append(o.gens[n.Serial], n.Generation)
	}
}

// reached is how many of serials were notified of generation gen or a
// later one, and how many notifications of gen came twice or more.
func (o *notified) reached(serials map[string]uint64) (missing []string, repeated int, err error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	for serial, gen := range serials {
		n := 0
		for _, g := range o.gens[serial] {
			if g >= gen {
				n++
			}
		}
		if n == 0 {
			missing = append(missing, serial)
		}
		repeated += max(n-1, 0)
	}
	return missing, repeated, o.err
}

// waitReached waits until every one of serials was notified of its
// generation (or a later one), and returns the repeats.
func (o *notified) waitReached(t testing.TB, serials map[string]uint64, timeout time.Duration) int {
	t.Helper()
	repeats := 0
	if err := testenv.WaitFor(timeout, func() error {
		missing, r, err := o.reached(serials)
		if err != nil {
			return err
		}
		repeats = r
		if len(missing) > 0 {
			return fmt.Errorf("%d of %d devices not notified of their generation (e.g. %s)", len(missing), len(serials), missing[0])
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return repeats
}

// Three cores on one database give the same answers: one hardware ID
// registered at all three at once is one device; its bundle is
// byte-identical whichever core builds it; of two changes with one
// If-Match sent to two cores at once, one wins and the other is told of
// the conflict; and once any core acknowledges a change, every core
// serves that generation or a later one, at once (no cache of records
// to go stale: each read is the database's). A group change made at one
// core reaches every member through the others' notifications too.
func TestReplicasAgree(t *testing.T) {
	rs := newReplicaSet(t, 3)
	cores := rs.run(t)
	obs := rs.observe(t)
	proxies := make([]*coreapi.Client, len(cores))
	admins := make([]*coreapi.Client, len(cores))
	for i, core := range cores {
		proxies[i], admins[i] = core.Client(t, core.Proxy(t)), core.Client(t, core.Admin(t))
	}

	// One hardware ID at three cores at once, twenty times.
	devices := map[string]uint64{}
	for n := range 20 {
		hw := coretest.RPi4(7000 + n)
		got := make([]*coreapi.Device, len(cores))
		errs := make([]error, len(cores))
		var wg sync.WaitGroup
		for i := range cores {
			wg.Go(func() {
				got[i], _, errs[i] = proxies[i].Register(ctx, coreapi.RegisterRequest{Board: "rpi4", HardwareID: hw})
			})
		}
		wg.Wait()
		for i := range cores {
			if errs[i] != nil || got[i].Serial != got[0].Serial {
				t.Fatalf("%s at core %d: %+v %v; core 1 said %+v", hw, i+1, got[i], errs[i], got[0])
			}
		}
		devices[got[0].Serial] = got[0].Generation
	}
	obs.waitReached(t, devices, 30*time.Second)

	var d *coreapi.Device
	for serial := range devices {
		if d, _ = admins[0].Device(ctx, serial); d != nil {
			break
		}
	}
	var first []byte
	for i, core := range cores {
		b, _ := core.Bundle(t, d.Serial)
		if i == 0 {
			first = b
		} else if !bytes.Equal(b, first) {
			t.Fatalf("core %d built another bundle for %s generation %d", i+1, d.Serial, d.Generation)
		}
	}

	// One If-Match at two cores at once: one change, one conflict.
	for round := range 10 {
		errs := make([]error, 2)
		var wg sync.WaitGroup
		for i := range 2 {
			wg.Go(func() {
				_, errs[i] = admins[(round+i)%3].SetDeviceData(ctx, d.Serial, d.Generation,
					coreapi.DataChange{Set: map[string]string{"/etc/prov/data/race": fmt.Sprint(round, i)}})
			})
		}
		wg.Wait()
		var se *coreapi.StatusError
		won, lost := 0, 0
		for _, err := range errs {
			switch {
			case err == nil:
				won++
			case errors.As(err, &se) && se.Body.Code == coreapi.CodeVersionConflict:
				lost++
			default:
				t.Fatalf("round %d: %v", round, err)
			}
		}
		if won != 1 || lost != 1 {
			t.Fatalf("round %d: %d changes applied, %d conflicts; want one each", round, won, lost)
		}
		if d, _ = admins[round%3].Device(ctx, d.Serial); d == nil {
			t.Fatal("device gone")
		}
	}

	// Acknowledged at one core, served by the others at once.
	for round := range 30 {
		at := round % 3
		changed, err := admins[at].SetDeviceData(ctx, d.Serial, d.Generation, coreapi.DataChange{Set: map[string]string{"/etc/prov/data/k": fmt.Sprint(round)}})
		if err != nil {
			t.Fatal(err)
		}
		for i := range cores {
			if i == at {
				continue
			}
			if got, err := admins[i].Device(ctx, d.Serial); err != nil || got.Generation != changed.Generation {
				t.Fatalf("round %d: core %d acknowledged generation %d, core %d then served %+v %v", round, at+1, changed.Generation, i+1, got, err)
			}
		}
		// The bundle of the acknowledged generation, the same bytes from
		// the core that changed it and the next one.
		b1, e1 := cores[at].Bundle(t, d.Serial)
		b2, e2 := cores[(at+1)%3].Bundle(t, d.Serial)
		if e1 != e2 || !bytes.Equal(b1, b2) {
			t.Fatalf("round %d: core %d serves bundle %s, core %d %s", round, at+1, e1, (at+1)%3+1, e2)
		}
		d = changed
	}

	// A group change at core 1: every member notified (by whichever core
	// claimed its job), and served at the new generation everywhere.
	g, err := admins[0].Group(ctx, "default")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := admins[0].SetGroupData(ctx, "default", g.Version, coreapi.DataChange{Set: map[string]string{"/etc/prov/data/g": "2"}}); err != nil {
		t.Fatal(err)
	}
	want := map[string]uint64{}
	for serial := range devices {
		v, err := admins[2].Device(ctx, serial)
		if err != nil {
			t.Fatal(err)
		}
		if v.Data["/etc/prov/data/g"] != "2" {
			t.Fatalf("core 3 serves %s without the group change core 1 acknowledged", serial)
		}
		want[serial] = v.Generation
	}
	obs.waitReached(t, want, 30*time.Second)
}

// runProcesses starts every replica as a prov-core process (bin) and
// returns the processes and their cores, ready.
func (rs *replicaSet) runProcesses(t *testing.T, bin string) ([]*exec.Cmd, []*coretest.Core, []*testenv.Buffer) {
	t.Helper()
	var cmds []*exec.Cmd
	var cores []*coretest.Core
	var logs []*testenv.Buffer
	for _, cfg := range rs.cfgs {
		cmd, core, lg := startCore(t, bin, rs.c, cfg)
		cmds, cores, logs = append(cmds, cmd), append(cores, core), append(logs, lg)
	}
	return cmds, cores, logs
}

// kill9 kills a replica's process and waits for it.
func kill9(t *testing.T, cmd *exec.Cmd) {
	t.Helper()
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
}

// jobsLeft is how many jobs wait in the database's outbox.
func (rs *replicaSet) jobsLeft(t testing.TB) int {
	t.Helper()
	db, err := pgx.Connect(ctx, rs.db)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = db.Close(ctx) }()
	var n int
	if err := db.QueryRow(ctx, "SELECT count(*) FROM jobs").Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// jobsDone waits until the outbox is empty.
func (rs *replicaSet) jobsDone(t testing.TB, timeout time.Duration) error {
	return testenv.WaitFor(timeout, func() error {
		if n := rs.jobsLeft(t); n != 0 {
			return fmt.Errorf("%d jobs left in the outbox (%s)", n, rs.jobsSummary(t))
		}
		return nil
	})
}

// jobsSummary counts the outbox's jobs by kind and attempts.
func (rs *replicaSet) jobsSummary(t testing.TB) string {
	t.Helper()
	db, err := pgx.Connect(ctx, rs.db)
	if err != nil {
		return err.Error()
	}
	defer func() { _ = db.Close(ctx) }()
	rows, err := db.Query(ctx, "SELECT kind || ' attempts ' || attempts || ': ' || count(*) FROM jobs GROUP BY kind, attempts ORDER BY 1")
	if err != nil {
		return err.Error()
	}
	lines, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return err.Error()
	}
	return strings.Join(lines, ", ")
}

// kill -9 of one of three replicas in the middle of a burst of 2,000
// registrations (when 600 were acknowledged): clients whose replica died
// go on at another, as a load balancer sends them, and retry what was not
// acknowledged. Every acknowledged registration is in the database, each
// hardware ID once with the serial acknowledged for it, and every device
// is notified of its first generation, the dead replica's share of the
// jobs included.
func TestKill9AReplicaDuringRegistrations(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and kills prov-core; skipped in -short")
	}
	bin := buildCore(t)
	rs := newReplicaSet(t, 3)
	obs := rs.observe(t)
	cmds, cores, logs := rs.runProcesses(t, bin)
	proxies := make([]*coreapi.Client, len(cores))
	for i, core := range cores {
		proxies[i] = core.Client(t, core.Proxy(t))
	}
	const total, killAt, victim = 2000, 600, 1
	next := make(chan int, total)
	for i := range total {
		next <- i
	}
	close(next)
	var mu sync.Mutex
	acked := map[string]string{} // hardware ID -> serial
	retried := 0
	reachedKill := make(chan struct{})
	var once sync.Once
	var wg sync.WaitGroup
	for w := range 16 {
		wg.Go(func() {
			at := w % len(cores)
			for i := range next {
				hw := coretest.RPi4(0x20000 + i)
				for attempt := 0; ; attempt++ {
					cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
					d, _, err := proxies[at].Register(cctx, coreapi.RegisterRequest{Board: "rpi4", HardwareID: hw})
					cancel()
					if err == nil {
						mu.Lock()
						if s, ok := acked[hw]; ok && s != d.Serial {
							t.Errorf("%s acknowledged as %s, then as %s", hw, s, d.Serial)
						}
						acked[hw] = d.Serial
						retried += min(attempt, 1)
						if len(acked) == killAt {
							once.Do(func() { close(reachedKill) })
						}
						mu.Unlock()
						break
					}
					if attempt == 5 {
						t.Errorf("%s not registered after %d attempts: %v", hw, attempt+1, err)
						return
					}
					at = (at + 1) % len(cores) // as the balancer would, once the dead one is out
					if at == victim {
						at = (at + 1) % len(cores)
					}
				}
			}
		})
	}
	<-reachedKill
	kill9(t, cmds[victim])
	wg.Wait()
	if t.Failed() {
		t.Fatalf("replica logs:\n%s", logs[victim].String())
	}

	db, err := pgx.Connect(ctx, rs.db)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = db.Close(ctx) }()
	rows, err := db.Query(ctx, "SELECT serial FROM devices")
	if err != nil {
		t.Fatal(err)
	}
	stored, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	inDB := map[string]bool{}
	for _, s := range stored {
		inDB[s] = true
	}
	want := map[string]uint64{}
	for hw, serial := range acked {
		if !inDB[serial] {
			t.Fatalf("acknowledged registration of %s (%s) is not in the database", hw, serial)
		}
		want[serial] = 1
	}
	if len(acked) != total || len(stored) != total {
		t.Fatalf("%d registrations acknowledged, %d devices stored; want %d each", len(acked), len(stored), total)
	}
	repeats := obs.waitReached(t, want, 60*time.Second)
	if err := rs.jobsDone(t, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	t.Logf("%d registrations acknowledged (%d after a retry at another replica), %d devices stored, all notified; %d notifications repeated", len(acked), retried, len(stored), repeats)
}

// kill -9 of one of three replicas in the middle of a group change of
// 10,000 members (once 2,000 were notified): every member is notified of
// its new generation, the dead replica's claimed jobs done by the others,
// and the outbox ends empty.
func TestKill9AReplicaDuringAGroupChange(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and kills prov-core; skipped in -short")
	}
	bin := buildCore(t)
	rs := newReplicaSet(t, 3)
	const members, killAt, victim = 10000, 2000, 1
	cmds, cores, logs := rs.runProcesses(t, bin)
	coretest.PopulateRegistered(t, rs.cfgs[0], "default", 0x30000, members)
	if err := rs.jobsDone(t, 60*time.Second); err != nil {
		t.Fatal(err)
	}
	admin := cores[0].Client(t, cores[0].Admin(t))
	// Every member's generation will be one more than it is now.
	want := map[string]uint64{}
	for after := ""; ; {
		page, err := admin.List(ctx, after, 1000)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range page.Devices {
			want[d.Serial] = d.Generation + 1
		}
		if after = page.Next; after == "" {
			break
		}
	}
	if len(want) != members {
		t.Fatalf("%d devices listed, want %d", len(want), members)
	}
	obs := rs.observe(t)
	g, err := admin.Group(ctx, "default")
	if err != nil {
		t.Fatal(err)
	}
	started := time.Now()
	if _, err := admin.SetGroupData(ctx, "default", g.Version, coreapi.DataChange{Set: map[string]string{"/etc/prov/data/g": "2"}}); err != nil {
		t.Fatal(err)
	}
	for {
		missing, _, err := obs.reached(want)
		if err != nil {
			t.Fatal(err)
		}
		if members-len(missing) >= killAt {
			break
		}
		if time.Since(started) > time.Minute {
			t.Fatalf("%d of %d notified in a minute", members-len(missing), members)
		}
		time.Sleep(time.Millisecond) // polling the observer's count, not waiting for time to pass
	}
	missing, _, _ := obs.reached(want)
	kill9(t, cmds[victim])
	repeats := obs.waitReached(t, want, 120*time.Second)
	elapsed := time.Since(started)
	if err := rs.jobsDone(t, 30*time.Second); err != nil {
		t.Fatalf("%v\nthe killed replica's log:\n%s", err, logs[victim].String())
	}
	t.Logf("group change of %d members: %d notified when replica %d was killed, all %d at the new generation after %s; %d notifications repeated (a members job the dead replica held, done again)",
		members, members-len(missing), victim+1, members, elapsed.Round(time.Millisecond), repeats)
}
