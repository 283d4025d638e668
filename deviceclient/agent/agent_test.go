package agent_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/fleetprov/prov/core/contract/coreapi"
	"github.com/fleetprov/prov/core/contract/hwid"
	"github.com/fleetprov/prov/core/contract/imagespec"
	"github.com/fleetprov/prov/core/coretest"
	"github.com/fleetprov/prov/core/imagebuild"
	"github.com/fleetprov/prov/deviceclient/agent"
	"github.com/fleetprov/prov/deviceclient/enroll"
	"github.com/fleetprov/prov/deviceclient/install"
	"github.com/fleetprov/prov/deviceclient/state"
	"github.com/fleetprov/prov/internal/testenv"
	"github.com/fleetprov/prov/pki"
	"github.com/fleetprov/prov/pki/ca/catest"
	"github.com/fleetprov/prov/pki/deployment"
	"github.com/fleetprov/prov/pki/signedimage"
	"github.com/fleetprov/prov/proxy/proxytest"
)

func TestMain(m *testing.M) { os.Exit(catest.Main(m)) }

var ctx = context.Background()

const local = "networks: [\"127.0.0.0/8\"]\n"

type fleet struct {
	core  *coretest.Core
	proxy *proxytest.Proxy
}

func newFleet(t *testing.T, proxyTop string) *fleet {
	t.Helper()
	core := coretest.Start(t, "")
	return &fleet{core: core, proxy: proxytest.StartWith(t, core, proxyTop, local)}
}

// enroll enrolls a BeagleBone Black with hardware ID raw, as prov-device
// enroll does, and returns its state directory.
func (f *fleet) enroll(t *testing.T, raw string) (*state.Dir, *state.Device) {
	t.Helper()
	id, err := hwid.Parse("bbb", raw)
	if err != nil {
		t.Fatal(err)
	}
	rootPEM, err := os.ReadFile(f.core.RootCert())
	if err != nil {
		t.Fatal(err)
	}
	st, err := state.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	dev, res, err := enroll.Enroll(ctx, st, enroll.Options{ProxyURL: f.proxy.URL, RootPEM: rootPEM, ID: id,
		Install: install.Options{Rules: imagespec.DefaultRules()}})
	if err != nil {
		t.Fatalf("enroll: %v", err)
	}
	if res.Generation != 1 || dev.Serial != id.Serial() {
		t.Fatalf("enrolled %+v, generation %d", dev, res.Generation)
	}
	return st, dev
}

func newAgent(t *testing.T, st *state.Dir, o agent.Options) *agent.Agent {
	t.Helper()
	o.Install.Rules = imagespec.DefaultRules()
	if o.Log == nil {
		o.Log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if o.Notify == nil {
		o.Notify = func(string) error { return nil }
	}
	a, err := agent.New(st, o)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// change sets a data file at core as an admin: a new generation.
func (f *fleet) change(t *testing.T, serial, value string) uint64 {
	t.Helper()
	cl := f.core.Client(t, f.core.Admin(t))
	d, err := cl.Device(ctx, serial)
	if err != nil {
		t.Fatal(err)
	}
	d, err = cl.SetDeviceData(ctx, serial, d.Generation, coreapi.DataChange{Set: map[string]string{"/etc/prov/data/site": value + "\n"}})
	if err != nil {
		t.Fatal(err)
	}
	return d.Generation
}

func generation(t *testing.T, st *state.Dir) uint64 {
	t.Helper()
	hw, err := st.HighWater()
	if err != nil {
		t.Fatal(err)
	}
	return hw.Generation
}

// installed is a condition for testenv.WaitFor: generation gen is the
// device's.
func installed(t *testing.T, st *state.Dir, gen uint64) func() error {
	return func() error {
		if got := generation(t, st); got != gen {
			return fmt.Errorf("generation %d installed, want %d; status %+v", got, gen, st.Status())
		}
		return nil
	}
}

func TestUpdateFromCore(t *testing.T) {
	f := newFleet(t, "")
	st, dev := f.enroll(t, "1813BBBK0101")
	a := newAgent(t, st, agent.Options{})
	if res, err := a.Update(ctx); err != nil || (res != nil && res.Changed) {
		t.Fatalf("nothing new: %+v %v", res, err)
	}
	gen := f.change(t, dev.Serial, "lab-1")
	res, err := a.Update(ctx)
	if err != nil || res == nil || !res.Changed || res.Generation != gen {
		t.Fatalf("update to %d: %+v %v", gen, res, err)
	}
	if res, err := a.Update(ctx); err != nil || res != nil {
		t.Fatalf("again (If-None-Match): %+v %v", res, err)
	}
	s := st.Status()
	if s.LastCheck.IsZero() || s.LastUpdate.IsZero() || s.LastError != "" || generation(t, st) != gen {
		t.Fatalf("status %+v", s)
	}
}

// Issue 14: a device's first update after enrolling sent no
// If-None-Match, so it downloaded the bundle it had just been given. Now
// it sends the tag of what it has, and a real core answers 304.
func TestFirstUpdateAfterEnrollingIsNotModified(t *testing.T) {
	f := newFleet(t, "")
	st, _ := f.enroll(t, "1813BBBK0101")
	if st.Status().ETag != "" {
		t.Fatalf("enrollment left an ETag: the test shows nothing")
	}
	a := newAgent(t, st, agent.Options{})
	if res, err := a.Update(ctx); err != nil || res != nil {
		t.Fatalf("first update: %+v %v, want nothing new (304)", res, err)
	}
	resp, err := f.core.HTTP(t, nil).Get(f.core.URL + coreapi.RouteMetrics.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	metrics, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	// The proxy fetched the first bundle (2xx); the device only asked.
	for _, line := range []string{`prov_core_requests_total{route="bundle",status="3xx"} 1`, `prov_core_requests_total{route="bundle",status="2xx"} 1`} {
		if !strings.Contains(string(metrics), line) {
			t.Errorf("core's metrics lack %s:\n%s", line, metrics)
		}
	}
	if s := st.Status(); s.ETag == "" || s.LastCheck.IsZero() {
		t.Errorf("status after the 304: %+v", s)
	}
}

// fakeCore serves core's identity and whatever bundle body the test
// wants, to feed the device what a broken or hostile core would.
func fakeCore(t *testing.T, c *catest.CA, body func(w http.ResponseWriter)) string {
	t.Helper()
	cert := coreCert(t, c)
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.HasSuffix(r.URL.Path, "/bundle") {
			http.NotFound(w, r)
			return
		}
		body(w)
	}))
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}, ClientAuth: tls.RequestClientCert, MinVersion: tls.VersionTLS13}
	srv.StartTLS()
	t.Cleanup(srv.CloseClientConnections)
	t.Cleanup(srv.Close)
	_, port, _ := net.SplitHostPort(srv.Listener.Addr().String())
	return "https://localhost:" + port
}

// coreCert is core's TLS identity, for servers that pose as core.
func coreCert(t *testing.T, c *catest.CA) tls.Certificate {
	t.Helper()
	cert, err := tls.LoadX509KeyPair(c.IdentityCert(pki.RoleCore, deployment.DefaultCoreName), c.IdentityKey(pki.RoleCore, deployment.DefaultCoreName))
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

// pointAt makes the enrolled device talk to another core.
func pointAt(t *testing.T, st *state.Dir, coreURL string) {
	t.Helper()
	dev, err := st.Device()
	if err != nil {
		t.Fatal(err)
	}
	dev.CoreURL = coreURL
	if err := st.SetDevice(dev); err != nil {
		t.Fatal(err)
	}
}

func TestBadBodiesKeepTheOldImage(t *testing.T) {
	f := newFleet(t, "")
	st, dev := f.enroll(t, "1813BBBK0102")
	c := f.core.CA
	signer, err := signedimage.LoadSigner(c.IdentityCert(pki.RoleSigner, deployment.DefaultSignerName), c.IdentityKey(pki.RoleSigner, deployment.DefaultSignerName))
	if err != nil {
		t.Fatal(err)
	}
	bundle := func(serial string, gen uint64) []byte {
		b, _, err := imagebuild.BuildBundle(&imagebuild.Record{Serial: serial, Generation: gen, IssuedAt: time.Now().UTC().Truncate(time.Second),
			Hostname: "h-" + serial, MQTTClientID: serial, MQTTGroupID: "g"}, imagespec.DefaultRules(), signer)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	good := bundle(dev.Serial, 7)
	// A good body first: generation 7 from this core is installed.
	pointAt(t, st, fakeCore(t, c, func(w http.ResponseWriter) { _, _ = w.Write(good) }))
	if res, err := newAgent(t, st, agent.Options{}).Update(ctx); err != nil || res.Generation != 7 {
		t.Fatalf("good body: %+v %v", res, err)
	}
	before, _, _ := st.Pointer(state.Current)
	newer, older, other := bundle(dev.Serial, 8), bundle(dev.Serial, 6), bundle("0f0e0d0c0b", 8)
	for _, tc := range []struct {
		name string
		body func(w http.ResponseWriter)
		want error
	}{
		{"truncated", func(w http.ResponseWriter) { _, _ = w.Write(newer[:len(newer)-100]) }, signedimage.ErrTruncated},
		{"endless", func(w http.ResponseWriter) {
			_, _ = w.Write(newer)
			chunk := make([]byte, 32<<10)
			for {
				if _, err := w.Write(chunk); err != nil {
					return
				}
			}
		}, signedimage.ErrTooLarge},
		{"slow", func(w http.ResponseWriter) {
			for _, b := range newer {
				if _, err := w.Write([]byte{b}); err != nil {
					return
				}
				w.(http.Flusher).Flush()
				time.Sleep(20 * time.Millisecond) // the slowness under test, not a wait
			}
		}, context.DeadlineExceeded},
		{"another device's", func(w http.ResponseWriter) { _, _ = w.Write(other) }, signedimage.ErrWrongDevice},
		{"rollback", func(w http.ResponseWriter) { _, _ = w.Write(older) }, signedimage.ErrRollback},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pointAt(t, st, fakeCore(t, c, tc.body))
			a := newAgent(t, st, agent.Options{DownloadTimeout: 2 * time.Second})
			res, err := a.Update(ctx)
			if !errors.Is(err, tc.want) {
				t.Fatalf("got %+v %v, want %v", res, err, tc.want)
			}
			if cur, _, _ := st.Pointer(state.Current); cur.Name != before.Name || generation(t, st) != 7 {
				t.Fatalf("current %s generation %d after a bad body", cur.Name, generation(t, st))
			}
			if st.Status().LastError == "" {
				t.Fatal("the failure is not in the status")
			}
			// The status says "rollback", the word an operator looks for.
			if tc.name == "rollback" && !strings.Contains(st.Status().LastError, "rollback") {
				t.Fatalf("a rollback in the status as %q", st.Status().LastError)
			}
			// status --json names a refusal as docs/image-format.md does.
			var r signedimage.Reason
			if errors.As(tc.want, &r) && st.Status().Refusal != string(r) {
				t.Fatalf("the status names the refusal %q, want %q", st.Status().Refusal, r)
			}
		})
	}
}

func TestMQTTNotificationUpdates(t *testing.T) {
	f := newFleet(t, "")
	st, dev := f.enroll(t, "1813BBBK0103")
	a := newAgent(t, st, agent.Options{PollInterval: time.Hour})
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- a.Run(runCtx) }()
	gen := f.change(t, dev.Serial, "lab-2")
	if err := testenv.WaitFor(20*time.Second, installed(t, st, gen)); err != nil {
		stop()
		t.Fatalf("not installed after the notification: %v", err)
	}
	stop()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("run: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("run did not stop")
	}
}

// notifications collects what the daemon tells systemd.
type notifications struct {
	mu   sync.Mutex
	msgs []string
}

func (n *notifications) notify(s string) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.msgs = append(n.msgs, s)
	return nil
}

func (n *notifications) has(s string) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, m := range n.msgs {
		if m == s {
			return true
		}
	}
	return false
}

func TestRenewal(t *testing.T) {
	f := newFleet(t, "certificateLifetime: 5m")
	st, dev := f.enroll(t, "1813BBBK0104")
	old, err := st.Leaf()
	if err != nil {
		t.Fatal(err)
	}
	if life := old.NotAfter.Sub(old.NotBefore); life > 6*time.Minute {
		t.Fatalf("enrolled for %s, asked for 5m", life)
	}
	// The daemon renews at once when the renewal is due.
	n := &notifications{}
	t.Setenv("WATCHDOG_USEC", "100000")
	a := newAgent(t, st, agent.Options{RenewAt: 0.001, PollInterval: time.Hour, Notify: n.notify})
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- a.Run(runCtx) }()
	var leaf *x509.Certificate
	if err := testenv.WaitFor(20*time.Second, func() error {
		var err error
		if leaf, err = st.Leaf(); err != nil {
			return err
		}
		if leaf.SerialNumber.Cmp(old.SerialNumber) == 0 {
			return fmt.Errorf("not renewed; status %+v", st.Status())
		}
		return nil
	}); err != nil {
		stop()
		t.Fatal(err)
	}
	if leaf.NotAfter.Before(old.NotAfter) || string(leaf.RawSubjectPublicKeyInfo) != string(old.RawSubjectPublicKeyInfo) {
		stop()
		t.Fatalf("renewed certificate: until %s (was %s), same key %v", leaf.NotAfter, old.NotAfter,
			string(leaf.RawSubjectPublicKeyInfo) == string(old.RawSubjectPublicKeyInfo))
	}
	// A failed wait is reported below, with every message systemd missed.
	_ = testenv.WaitFor(20*time.Second, func() error {
		if !n.has("WATCHDOG=1") {
			return errors.New("no WATCHDOG=1 yet")
		}
		return nil
	})
	stop()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"READY=1", "WATCHDOG=1", "STOPPING=1"} {
		if !n.has(want) {
			t.Errorf("systemd was not told %s: %v", want, n.msgs)
		}
	}
	// The renewed certificate works at core.
	b := newAgent(t, st, agent.Options{})
	gen := f.change(t, dev.Serial, "after-renewal")
	if res, err := b.Update(ctx); err != nil || res == nil || res.Generation != gen {
		t.Fatalf("update with the renewed certificate: %+v %v", res, err)
	}
	// Past its end, renewal says what to do.
	late := newAgent(t, st, agent.Options{Install: install.Options{Now: func() time.Time { return time.Now().Add(time.Hour) }}})
	if err := late.Renew(ctx); !errors.Is(err, agent.ErrCertExpired) || !strings.Contains(err.Error(), "enroll this device again") {
		t.Fatalf("expired: %v", err)
	}
}

func TestEnrollChecks(t *testing.T) {
	f := newFleet(t, "")
	st, dev := f.enroll(t, "1813BBBK0105")
	rootPEM, _ := os.ReadFile(f.core.RootCert())
	again := func(raw string, force bool) error {
		id, _ := hwid.Parse("bbb", raw)
		_, _, err := enroll.Enroll(ctx, st, enroll.Options{ProxyURL: f.proxy.URL, RootPEM: rootPEM, ID: id, Force: force,
			Install: install.Options{Rules: imagespec.DefaultRules()}})
		return err
	}
	if err := again("1813BBBK0105", false); !errors.Is(err, enroll.ErrAlreadyEnrolled) {
		t.Fatalf("second enroll: %v", err)
	}
	if err := again("1813BBBK0999", true); !errors.Is(err, state.ErrIDChanged) {
		t.Fatalf("another board with this card: %v", err)
	}
	if err := dev.CheckID("bbb", "1813BBBK0999"); !errors.Is(err, state.ErrIDChanged) || !strings.Contains(err.Error(), dev.Serial) {
		t.Fatalf("CheckID: %v", err)
	}
	// The key stays 0600 and the certificate is for it.
	fi, err := os.Stat(filepath.Join(st.Path, state.KeyFile))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file: %v %v", fi.Mode(), err)
	}
	// A proxy that is not a proxy (core's certificate) is refused.
	other := fakeCore(t, f.core.CA, func(http.ResponseWriter) {})
	fresh, err := state.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	id, _ := hwid.Parse("bbb", "1813BBBK0106")
	if _, _, err := enroll.Enroll(ctx, fresh, enroll.Options{ProxyURL: other, RootPEM: rootPEM, ID: id,
		Install: install.Options{Rules: imagespec.DefaultRules()}}); err == nil || !strings.Contains(err.Error(), "role") {
		t.Fatalf("core posing as the proxy: %v", err)
	}
}

// TestForgedMQTTMessageOnlyChecks: on a broker where anyone may publish, a
// forged notification (a generation that does not exist, garbage) makes
// the device ask core, and nothing more.
func TestForgedMQTTMessageOnlyChecks(t *testing.T) {
	f := newFleet(t, "")
	st, dev := f.enroll(t, "1813BBBK0107")
	c := f.core.CA
	cert := coreCert(t, c)
	broker := mochi.New(&mochi.Options{InlineClient: true, Logger: slog.New(slog.DiscardHandler)})
	if err := broker.AddHook(new(allowAll), nil); err != nil {
		t.Fatal(err)
	}
	// The device checks at start and again once subscribed. Holding its
	// subscription until the first check is done keeps the two apart, so
	// that the check after each forged message can only be that message's.
	gate := &subscribeGate{open: make(chan struct{})}
	var openOnce sync.Once
	openGate := func() { openOnce.Do(func() { close(gate.open) }) }
	if err := broker.AddHook(gate, nil); err != nil {
		t.Fatal(err)
	}
	ln := listeners.NewTCP(listeners.Config{ID: "open", Address: "127.0.0.1:0",
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13}})
	if err := broker.AddListener(ln); err != nil {
		t.Fatal(err)
	}
	if err := broker.Serve(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = broker.Close() })
	// If the test ends early, the gate opens before the broker closes
	// (cleanups run last first).
	t.Cleanup(openGate)
	_, port, _ := net.SplitHostPort(ln.Address()) // the port it bound
	dev.MQTTURL = "tls://localhost:" + port
	if err := st.SetDevice(dev); err != nil {
		t.Fatal(err)
	}
	before, _, _ := st.Pointer(state.Current)
	a := newAgent(t, st, agent.Options{PollInterval: time.Hour})
	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	done := make(chan error, 1)
	go func() { done <- a.Run(runCtx) }()
	waitCheckAfter := func(t0 time.Time) {
		t.Helper()
		if err := testenv.WaitFor(20*time.Second, func() error {
			if s := st.Status(); !s.LastCheck.After(t0) {
				return fmt.Errorf("no check after %s; status %+v", t0, s)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	waitCheckAfter(time.Time{}) // the check at start
	subscribing := time.Now().UTC()
	openGate()
	waitCheckAfter(subscribing) // and the one on subscribing
	for _, payload := range []string{
		fmt.Sprintf(`{"serial":%q,"generation":99,"sha256":"%s"}`, dev.Serial, strings.Repeat("f", 64)),
		"\x00\xff not a notification",
	} {
		t0 := time.Now().UTC()
		if err := broker.Publish(coreapi.DeviceTopic(dev.Serial), []byte(payload), false, 1); err != nil {
			t.Fatal(err)
		}
		waitCheckAfter(t0)
		if cur, _, _ := st.Pointer(state.Current); cur.Name != before.Name || generation(t, st) != 1 {
			t.Fatalf("a forged message changed the image: %s, generation %d", cur.Name, generation(t, st))
		}
	}
	stop()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// allowAll lets anyone connect, publish and subscribe: a broker an
// attacker can publish on.
type allowAll struct{ mochi.HookBase }

func (*allowAll) ID() string { return "allow-all" }
func (*allowAll) Provides(b byte) bool {
	return b == mochi.OnConnectAuthenticate || b == mochi.OnACLCheck
}
func (*allowAll) OnConnectAuthenticate(*mochi.Client, packets.Packet) bool { return true }
func (*allowAll) OnACLCheck(*mochi.Client, string, bool) bool              { return true }

// subscribeGate holds every subscription, before the broker acknowledges
// it, until open is closed.
type subscribeGate struct {
	mochi.HookBase
	open chan struct{}
}

func (*subscribeGate) ID() string           { return "subscribe-gate" }
func (*subscribeGate) Provides(b byte) bool { return b == mochi.OnSubscribe }
func (g *subscribeGate) OnSubscribe(_ *mochi.Client, pk packets.Packet) packets.Packet {
	<-g.open
	return pk
}

// With the broker away, the daemon polls (jittered) and still updates.
func TestPollsWhileMQTTIsDown(t *testing.T) {
	f := newFleet(t, "")
	st, dev := f.enroll(t, "1813BBBK0108")
	dev.MQTTURL = fmt.Sprintf("tls://127.0.0.1:%d", testenv.RefusingPort(t)) // nothing listens
	if err := st.SetDevice(dev); err != nil {
		t.Fatal(err)
	}
	a := newAgent(t, st, agent.Options{PollInterval: 300 * time.Millisecond})
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- a.Run(runCtx) }()
	gen := f.change(t, dev.Serial, "polled")
	if err := testenv.WaitFor(20*time.Second, installed(t, st, gen)); err != nil {
		stop()
		t.Fatalf("not polled: %v", err)
	}
	stop()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
