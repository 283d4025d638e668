package service_test

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/packets"
	"github.com/eclipse/paho.golang/paho"
	"golang.org/x/time/rate"

	"github.com/fleetprov/prov/core/contract/coreapi"
	"github.com/fleetprov/prov/core/contract/imagespec"
	"github.com/fleetprov/prov/core/coretest"
	"github.com/fleetprov/prov/internal/httpapi"
	"github.com/fleetprov/prov/internal/testenv"
	"github.com/fleetprov/prov/pki"
	"github.com/fleetprov/prov/pki/ca/catest"
	"github.com/fleetprov/prov/pki/deployment"
	"github.com/fleetprov/prov/pki/signedimage"
)

// shortLived is a PKI whose step-ca runs and whose core and signer
// certificates last lifetime (plus step-ca's minute of backdate).
func shortLived(t *testing.T, lifetime time.Duration) (*catest.CA, []*deployment.Issued) {
	t.Helper()
	d := catest.NewPKI(t)
	catest.ShortServiceCerts(t, d, 30*time.Second)
	c := catest.Run(t, d)
	return c, []*deployment.Issued{
		c.Reissue(t, pki.RoleCore, deployment.DefaultCoreName, lifetime),
		c.Reissue(t, pki.RoleSigner, deployment.DefaultSignerName, lifetime),
	}
}

// enrolled registers a device as the proxy does and records a certificate
// for it, the one the device then uses.
func enrolled(t *testing.T, core *coretest.Core, n int) (*coreapi.Device, *tls.Certificate) {
	t.Helper()
	d := core.Register(t, "rpi4", coretest.RPi4(n))
	cert := coretest.DeviceCert(t, core.CA, d.Serial, 30*time.Minute)
	der, err := x509.MarshalPKIXPublicKey(cert.Leaf.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(der)
	if _, err := core.Client(t, core.Proxy(t)).RecordIssued(ctx, d.Serial, coreapi.IssuedCertificate{Serial: cert.Leaf.SerialNumber.String(),
		KeySHA256: hex.EncodeToString(sum[:]), NotBefore: cert.Leaf.NotBefore, NotAfter: cert.Leaf.NotAfter}); err != nil {
		t.Fatal(err)
	}
	return d, cert
}

// load is clients that keep connecting, counting what worked and what did
// not, and the server certificates they met.
type load struct {
	mu      sync.Mutex
	ok      map[string]int
	errs    []string
	serials map[string]map[string]bool // client -> server serials met
	lastOK  map[string]time.Time
	stop    chan struct{}
	wg      sync.WaitGroup
}

func newLoad() *load {
	return &load{ok: map[string]int{}, serials: map[string]map[string]bool{}, lastOK: map[string]time.Time{}, stop: make(chan struct{})}
}

// run calls one until stopped, with a short pause between calls.
func (l *load) run(name string, one func() (serverSerial string, err error)) {
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		for {
			select {
			case <-l.stop:
				return
			case <-time.After(50 * time.Millisecond):
			}
			serial, err := one()
			l.mu.Lock()
			if err != nil {
				l.errs = append(l.errs, fmt.Sprintf("%s at %s: %v", name, time.Now().UTC().Format(time.RFC3339Nano), err))
			} else {
				l.ok[name]++
				l.lastOK[name] = time.Now()
				if serial != "" {
					if l.serials[name] == nil {
						l.serials[name] = map[string]bool{}
					}
					l.serials[name][serial] = true
				}
			}
			l.mu.Unlock()
		}
	}()
}

// halt stops the clients and waits for them.
func (l *load) halt() {
	close(l.stop)
	l.wg.Wait()
}

func (l *load) seen(name string) (ok, serials int, last time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.ok[name], len(l.serials[name]), l.lastOK[name]
}

// leafSerial is the serial of the peer's certificate of a connection.
func leafSerial(cs *tls.ConnectionState) string {
	if cs == nil || len(cs.PeerCertificates) == 0 {
		return ""
	}
	return cs.PeerCertificates[0].SerialNumber.String()
}

// Core renews its TLS certificate and the image signer's at step-ca, at two
// thirds of their life, several times and past the end of the first ones,
// while devices keep connecting to its API (a new connection each time,
// and one kept alive) and to its broker (a new session each time, and one
// kept open): no connection is refused or dropped, new ones meet each
// renewed certificate, the open session still hears its notification, and
// readyz stays ready without warnings. A bundle signed before the signer's
// renewals still verifies at its issue time after its signer's certificate
// ended (as a device checks a kept bundle at boot); the same generation,
// built again and signed with the renewed chain, verifies both now and at
// its issue time.
func TestRenewsItselfUnderLoad(t *testing.T) {
	// Most of its time is waiting for certificates to age: it runs beside
	// the package's other waiting test (its own step-ca and core, every
	// port bound first).
	t.Parallel()
	c, issued := shortLived(t, time.Minute)
	dir := t.TempDir()
	core := coretest.Run(t, c, coretest.Config(t, c.Deployment, dir,
		// (The device's requests are the load here, not a device's rate.)
		fmt.Sprintf("ca: {url: %q}\nrenewal: {backoff: {min: 1s, max: 5s}}\nlimits: {device: {rate: 1000, burst: 1000}}\n", c.CAURL)), dir)
	roots, err := pki.LoadTrustBundle(c.RootCert())
	if err != nil {
		t.Fatal(err)
	}
	kept, keptCert := enrolled(t, core, 0x71)
	churn, churnCert := enrolled(t, core, 0x72)
	admin := core.Client(t, core.Admin(t))
	fetch := func() ([]byte, string) { t.Helper(); return core.Bundle(t, kept.Serial) }
	before, beforeETag := fetch()

	// The session kept open for the whole test: a device of its own, so
	// that the reconnecting one never takes its client ID.
	var dropped atomic.Value
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", core.MQTTAddr, deviceTLS(t, c, keptCert))
	if err != nil {
		t.Fatal(err)
	}
	msgs := make(chan *paho.Publish, 16)
	open := paho.NewClient(paho.ClientConfig{Conn: packets.NewThreadSafeConn(conn),
		OnPublishReceived:  []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) { msgs <- pr.Packet; return true, nil }},
		OnClientError:      func(err error) { dropped.Store(err.Error()) },
		OnServerDisconnect: func(d *paho.Disconnect) { dropped.Store(fmt.Sprintf("server disconnect, reason %d", d.ReasonCode)) },
	})
	if ca, err := open.Connect(ctx, &paho.Connect{ClientID: coreapi.DeviceClientID(kept.Serial), CleanStart: true, KeepAlive: 5}); err != nil || ca.ReasonCode != 0 {
		t.Fatalf("the kept session: %v %v", ca, err)
	}
	t.Cleanup(func() { _ = open.Disconnect(&paho.Disconnect{}) })
	if sa, err := open.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: coreapi.DeviceTopic(kept.Serial), QoS: 1}}}); err != nil || sa.Reasons[0] > 2 {
		t.Fatalf("subscribe: %v %v", sa, err)
	}

	l := newLoad()
	defer l.halt()
	// A GET that must answer 200; it returns the serial of the server
	// certificate of the connection it went over.
	get := func(hc *http.Client, url string) func() (string, error) {
		return func() (string, error) {
			resp, err := hc.Get(url) //nolint:noctx // a test
			if err != nil {
				return "", err
			}
			defer func() { _ = resp.Body.Close() }()
			_, _ = io.Copy(io.Discard, resp.Body)
			if resp.StatusCode != http.StatusOK {
				return "", fmt.Errorf("HTTP %d", resp.StatusCode)
			}
			return leafSerial(resp.TLS), nil
		}
	}
	newConns := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: core.TLS(t, churnCert), DisableKeepAlives: true}}
	l.run("api, new connections", get(newConns, core.URL+coreapi.RouteDevice.URL(churn.Serial)))
	l.run("api, one connection kept alive", get(core.HTTP(t, core.Admin(t)), core.URL+coreapi.RouteDevice.URL(kept.Serial)))
	churnTLS := deviceTLS(t, c, churnCert)
	l.run("broker, new sessions", func() (string, error) {
		conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", core.MQTTAddr, churnTLS)
		if err != nil {
			return "", err
		}
		cs := conn.ConnectionState()
		serial := leafSerial(&cs)
		cl := paho.NewClient(paho.ClientConfig{Conn: packets.NewThreadSafeConn(conn)})
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		ca, err := cl.Connect(cctx, &paho.Connect{ClientID: coreapi.DeviceClientID(churn.Serial), CleanStart: true, KeepAlive: 30})
		if err != nil {
			_ = conn.Close()
			return "", err
		}
		if ca.ReasonCode != 0 {
			_ = conn.Close()
			return "", fmt.Errorf("CONNACK %d", ca.ReasonCode)
		}
		sa, err := cl.Subscribe(cctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: coreapi.DeviceTopic(churn.Serial), QoS: 1}}})
		_ = cl.Disconnect(&paho.Disconnect{})
		if err != nil {
			return "", err
		}
		if sa.Reasons[0] > 2 {
			return "", fmt.Errorf("SUBACK %#x", sa.Reasons[0])
		}
		return serial, nil
	})

	obs := newObserver(t, core)
	firstEnd := issued[0].Leaf.NotAfter
	if issued[1].Leaf.NotAfter.After(firstEnd) {
		firstEnd = issued[1].Leaf.NotAfter
	}
	if err := testenv.WaitFor(4*time.Minute, func() error {
		m, err := obs.metrics()
		if err != nil {
			return err
		}
		for _, cert := range []string{"tls", "signer"} {
			if n := m[renewals(cert, "renewed")]; n < 3 {
				return fmt.Errorf("%s renewed %.0f times, want 3", cert, n)
			}
		}
		if !time.Now().After(firstEnd.Add(5 * time.Second)) {
			return fmt.Errorf("waiting for the first certificates' end, %s", firstEnd.UTC())
		}
		for _, name := range []string{"api, new connections", "broker, new sessions"} {
			if _, serials, last := l.seen(name); serials < 3 || !last.After(firstEnd) {
				return fmt.Errorf("%s: met %d server certificates, the last success at %s", name, serials, last.UTC())
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	l.halt()
	l.stop = make(chan struct{}) // for the deferred halt
	for _, name := range []string{"api, new connections", "api, one connection kept alive", "broker, new sessions"} {
		ok, serials, _ := l.seen(name)
		t.Logf("%s: %d calls, %d server certificates met", name, ok, serials)
	}
	if len(l.errs) > 0 {
		t.Fatalf("%d calls failed across the renewals, the first: %s", len(l.errs), strings.Join(l.errs[:min(len(l.errs), 5)], "; "))
	}
	// The kept connection is the one it began with: it met one certificate.
	if _, serials, _ := l.seen("api, one connection kept alive"); serials != 1 {
		t.Fatalf("the kept-alive client met %d server certificates: its connection was made again", serials)
	}

	// The signer. The bundle fetched at the start was signed by a
	// certificate that has ended: checked now it is refused, checked at its
	// issue time (a kept bundle at boot) it verifies. The same generation
	// fetched again is the same image signed with the renewed chain, and
	// verifies both ways.
	opts := signedimage.VerifyOptions{Roots: roots, Serial: kept.Serial, MaxImageSize: imagespec.MaxImageSize}
	atIssue := opts
	atIssue.AtIssue = true
	if _, _, err := signedimage.VerifyBytes(before, opts); !errors.Is(err, signedimage.ErrUntrustedSigner) {
		t.Fatalf("the first bundle checked now, its signer's certificate ended: %v", err)
	}
	if _, _, err := signedimage.VerifyBytes(before, atIssue); err != nil {
		t.Fatalf("the first bundle checked at its issue time: %v", err)
	}
	after, afterETag := fetch()
	if afterETag != beforeETag || string(after) == string(before) {
		t.Fatalf("the same generation after the renewals: ETag %s (was %s), same bytes: %v", afterETag, beforeETag, string(after) == string(before))
	}
	for name, o := range map[string]signedimage.VerifyOptions{"now": opts, "at its issue time": atIssue} {
		if v, _, err := signedimage.VerifyBytes(after, o); err != nil || v.Generation != kept.Generation {
			t.Fatalf("a generation made before the signer's renewals, signed after them, checked %s: %+v %v", name, v, err)
		}
	}

	// The kept session is still open: it hears of a data change.
	if d, ok := dropped.Load().(string); ok {
		t.Fatalf("the kept MQTT session ended: %s", d)
	}
	dev, err := admin.Device(ctx, kept.Serial)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := admin.SetDeviceData(ctx, kept.Serial, dev.Generation, coreapi.DataChange{Set: map[string]string{"/etc/prov/data/renewed": "yes\n"}}); err != nil {
		t.Fatal(err)
	}
	if err := testenv.WaitFor(30*time.Second, func() error {
		select {
		case p := <-msgs:
			var n coreapi.Notification
			if err := json.Unmarshal(p.Payload, &n); err == nil && n.Generation == dev.Generation+1 {
				return nil
			}
			return errors.New("an older notification")
		default:
			return errors.New("no notification on the kept session yet")
		}
	}); err != nil {
		t.Fatal(err)
	}

	// Ready, no warnings: every renewal was on time; the expiry metric is
	// the renewed certificate's.
	if err := testenv.WaitFor(30*time.Second, func() error {
		status, ready, err := obs.readyz()
		if err != nil {
			return err
		}
		if status != http.StatusOK || len(ready.Warnings) != 0 {
			return testenv.Final(fmt.Errorf("readyz: %d %+v", status, ready))
		}
		m, err := obs.metrics()
		if err != nil {
			return err
		}
		if got := m[`prov_core_certificate_expiry_seconds{cert="tls"}`]; got <= float64(time.Now().Unix()) {
			return testenv.Final(fmt.Errorf("tls expiry metric %v, in the past", got))
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// observer reads core's public /metrics and /readyz as a monitoring
// system would, at a pace under core's limit for callers without a
// certificate (20 a second per address); an answer of that limit is an
// error, and the condition waited on is tried again.
type observer struct {
	hc   *http.Client
	url  string
	pace *rate.Limiter
}

func newObserver(t *testing.T, core *coretest.Core) *observer {
	return &observer{hc: core.HTTP(t, nil), url: core.URL, pace: rate.NewLimiter(5, 1)}
}

func (o *observer) get(path string) (int, []byte, error) {
	if err := o.pace.Wait(ctx); err != nil {
		return 0, nil, err
	}
	resp, err := o.hc.Get(o.url + path) //nolint:noctx // a test
	if err != nil {
		return 0, nil, err
	}
	defer func() { _ = resp.Body.Close() }()
	b, err := io.ReadAll(resp.Body)
	if err == nil && resp.StatusCode == http.StatusTooManyRequests {
		err = fmt.Errorf("%s: rate-limited", path)
	}
	return resp.StatusCode, b, err
}

// metrics is every series of /metrics (name and labels as written there)
// and its value.
func (o *observer) metrics() (map[string]float64, error) {
	status, b, err := o.get("/metrics")
	if err != nil {
		return nil, err
	}
	if status != http.StatusOK {
		return nil, fmt.Errorf("/metrics: HTTP %d", status)
	}
	out := map[string]float64{}
	for _, line := range strings.Split(string(b), "\n") {
		i := strings.LastIndexByte(line, ' ')
		if i < 0 || strings.HasPrefix(line, "#") {
			continue
		}
		if v, err := strconv.ParseFloat(line[i+1:], 64); err == nil {
			out[line[:i]] = v
		}
	}
	return out, nil
}

// readyz is the status of /readyz and, when ready, its body.
func (o *observer) readyz() (int, httpapi.Readiness, error) {
	var ready httpapi.Readiness
	status, b, err := o.get("/readyz")
	if err == nil && status == http.StatusOK {
		err = json.Unmarshal(b, &ready)
	}
	return status, ready, err
}

// step-ca away when core's certificates are due: every attempt fails, is
// counted and retried with back-off; once little of a certificate's life is
// left core is still ready but says so in /readyz; step-ca back, both
// certificates renew and the warnings go.
func TestRenewalWithStepCADown(t *testing.T) {
	// Waits for certificates to age, beside TestRenewsItselfUnderLoad.
	t.Parallel()
	c, _ := shortLived(t, time.Minute)
	u, err := url.Parse(c.CAURL)
	if err != nil {
		t.Fatal(err)
	}
	relay := testenv.NewRelay(t, net.JoinHostPort("127.0.0.1", u.Port()))
	relay.Down()
	dir := t.TempDir()
	// Renewal due at once (half of a life that began a minute ago), the
	// warning from 36 s before the end on.
	core := coretest.Run(t, c, coretest.Config(t, c.Deployment, dir,
		fmt.Sprintf("ca: {url: %q}\nrenewal: {at: 0.5, warnLeft: 0.3, backoff: {min: 1s, max: 4s}}\n", "https://"+relay.Addr)), dir)
	obs := newObserver(t, core)
	if err := testenv.WaitFor(2*time.Minute, func() error {
		m, err := obs.metrics()
		if err != nil {
			return err
		}
		for _, cert := range []string{"tls", "signer"} {
			if n := m[renewals(cert, "failed")]; n < 2 {
				return fmt.Errorf("%s: %.0f failed renewals", cert, n)
			}
			if n := m[fmt.Sprintf(`prov_core_certificate_renewal_failures{cert=%q}`, cert)]; n < 2 {
				return fmt.Errorf("%s: %.0f failures in a row", cert, n)
			}
			if n := m[renewals(cert, "renewed")]; n != 0 {
				return testenv.Final(fmt.Errorf("%s renewed %.0f times with step-ca away", cert, n))
			}
		}
		status, ready, err := obs.readyz()
		if err != nil {
			return err
		}
		if status != http.StatusOK {
			return testenv.Final(fmt.Errorf("readyz %d with step-ca away: core is still ready", status))
		}
		w := strings.Join(ready.Warnings, "\n")
		if len(ready.Warnings) != 2 || !strings.Contains(w, "the tls certificate ends") || !strings.Contains(w, "the signer certificate ends") ||
			!strings.Contains(w, "has failed") {
			return fmt.Errorf("readyz warnings %q", ready.Warnings)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	relay.Up()
	if err := testenv.WaitFor(time.Minute, func() error {
		m, err := obs.metrics()
		if err != nil {
			return err
		}
		for _, cert := range []string{"tls", "signer"} {
			if n := m[renewals(cert, "renewed")]; n < 1 {
				return fmt.Errorf("%s not renewed yet", cert)
			}
		}
		status, ready, err := obs.readyz()
		if err != nil {
			return err
		}
		if status != http.StatusOK || len(ready.Warnings) != 0 {
			return fmt.Errorf("readyz %d %q", status, ready.Warnings)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// renewals is the series of core's renewals of cert with result.
func renewals(cert, result string) string {
	return fmt.Sprintf(`prov_core_certificate_renewals_total{cert=%q,result=%q}`, cert, result)
}
