package service_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fleetprov/prov/core/contract/coreapi"
	"github.com/fleetprov/prov/core/contract/imagespec"
	"github.com/fleetprov/prov/core/coretest"
	"github.com/fleetprov/prov/core/service"
	"github.com/fleetprov/prov/core/store"
	"github.com/fleetprov/prov/deviceclient/inspect"
	"github.com/fleetprov/prov/internal/testenv/pgtest"
	"github.com/fleetprov/prov/pki"
	"github.com/fleetprov/prov/pki/ca/catest"
	"github.com/fleetprov/prov/pki/pkitest"
	"github.com/fleetprov/prov/pki/signedimage"
)

// The shared step-ca and, for the tests on PostgreSQL, the private
// cluster (pgtest) stop when the tests end.
func TestMain(m *testing.M) {
	code := pgtest.After(catest.Main(m))
	if coreBin.dir != "" {
		_ = os.RemoveAll(coreBin.dir)
	}
	os.Exit(code)
}

var ctx = context.Background()

// TestRoleRouteMatrix sends every route as every kind of caller and checks
// the status: each role reaches only its own routes, a device only its own
// record, and another serial is the same 404 as a missing one.
func TestRoleRouteMatrix(t *testing.T) {
	core := coretest.Start(t, "")
	own := core.Register(t, "rpi4", coretest.RPi4(1))
	other := core.Register(t, "rpi4", coretest.RPi4(2))
	victim := core.Register(t, "rpi4", coretest.RPi4(3))
	ownCert := core.Enrolled(t, own.Serial, 0)
	// The proxy's route records another certificate of the same key: one
	// of another key would be a re-enrollment, which replaces the key.
	ownKey, err := coreapi.KeySHA256(ownCert.Leaf.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	callers := map[string]*http.Client{
		"none":         core.HTTP(t, nil),
		"device":       core.HTTP(t, ownCert),
		"proxy":        core.HTTP(t, core.Proxy(t)),
		"admin":        core.HTTP(t, core.Admin(t)),
		"core":         core.HTTP(t, core.ServiceCert(t, pki.RoleCore, "core")),
		"device-other": core.HTTP(t, core.Enrolled(t, other.Serial, 0)),
	}
	missing := "0000000000"
	type req struct {
		method, path, body string
		header             map[string]string
	}
	reg := `{"board":"rpi4","hardwareId":"` + coretest.RPi4(4) + `"}`
	ifm := map[string]string{"If-Match": `"999"`}
	for _, tc := range []struct {
		req  req
		want map[string]int // caller -> status; callers not named get 403 (with a certificate) or 401 (without)
	}{
		{req{"POST", "/v1/devices", reg, nil}, map[string]int{"proxy": 201}},
		{req{"GET", "/v1/devices", "", nil}, map[string]int{"admin": 200}},
		{req{"POST", "/v1/devices/" + own.Serial + "/certificates", `{"serial":"12345","keySha256":"` + ownKey + `","notBefore":"2026-01-01T00:00:00Z","notAfter":"2026-01-02T00:00:00Z"}`, nil}, map[string]int{"proxy": 200}},
		{req{"GET", "/v1/devices/" + own.Serial, "", nil}, map[string]int{"admin": 200, "device": 200, "device-other": 404}},
		{req{"GET", "/v1/devices/" + missing, "", nil}, map[string]int{"admin": 404, "device": 404, "device-other": 404}},
		{req{"GET", "/v1/devices/" + own.Serial + "/bundle", "", nil}, map[string]int{"device": 200, "proxy": 200, "device-other": 404}},
		{req{"GET", "/v1/devices/" + missing + "/bundle", "", nil}, map[string]int{"device": 404, "proxy": 404, "device-other": 404}},
		{req{"PATCH", "/v1/devices/" + own.Serial + "/data", `{"set":{"/etc/prov/data/x":"1"}}`, ifm}, map[string]int{"admin": 412}},
		{req{"POST", "/v1/devices/" + own.Serial + "/reprovision", "{}", nil}, map[string]int{"admin": 200}},
		{req{"GET", "/v1/devices/" + own.Serial + "/audit", "", nil}, map[string]int{"admin": 200, "device-other": 403}},
		{req{"GET", "/v1/groups/default", "", nil}, map[string]int{"admin": 200}},
		{req{"PATCH", "/v1/groups/default/data", `{"set":{}}`, ifm}, map[string]int{"admin": 412}},
		{req{"GET", "/v1/groups/default/audit", "", nil}, map[string]int{"admin": 200}},
		{req{"GET", "/v1/backup", "", nil}, map[string]int{"admin": 200}},
		{req{"POST", "/v1/devices/" + victim.Serial + "/revoke", `{"reason":"matrix"}`, nil}, map[string]int{"admin": 200}},
		{req{"GET", "/healthz", "", nil}, map[string]int{"none": 200, "device": 200, "proxy": 200, "admin": 200, "core": 200, "device-other": 200}},
		{req{"GET", "/readyz", "", nil}, map[string]int{"none": 200, "device": 200, "proxy": 200, "admin": 200, "core": 200, "device-other": 200}},
		{req{"GET", "/metrics", "", nil}, map[string]int{"none": 200, "device": 200, "proxy": 200, "admin": 200, "core": 200, "device-other": 200}},
	} {
		for _, caller := range []string{"none", "device", "device-other", "proxy", "admin", "core"} {
			want, ok := tc.want[caller]
			if !ok {
				want = http.StatusForbidden
				if caller == "none" {
					want = http.StatusUnauthorized
				}
			}
			// "device" is the own device; the admin-only route tested with
			// device-other expects 403 as for any device.
			t.Run(fmt.Sprintf("%s %s as %s", tc.req.method, tc.req.path, caller), func(t *testing.T) {
				r, err := http.NewRequestWithContext(ctx, tc.req.method, core.URL+tc.req.path, strings.NewReader(tc.req.body))
				if err != nil {
					t.Fatal(err)
				}
				for k, v := range tc.req.header {
					r.Header.Set(k, v)
				}
				resp, err := callers[caller].Do(r)
				if err != nil {
					t.Fatal(err)
				}
				body, _ := io.ReadAll(resp.Body)
				_ = resp.Body.Close()
				if resp.StatusCode != want {
					t.Fatalf("status %d, want %d: %s", resp.StatusCode, want, body)
				}
				if resp.StatusCode >= 400 {
					var e coreapi.Error
					if err := json.Unmarshal(body, &e); err != nil || e.Code == "" || e.Message == "" {
						t.Fatalf("error body is not the JSON error: %s", body)
					}
				}
			})
		}
	}
}

func TestClientsCoreRefuses(t *testing.T) {
	core := coretest.Start(t, "")
	foreign := pkitest.NewCA(t, catest.TrustDomain) // another PKI, the same trust domain
	fc := foreign.TLSCert(t, pkitest.LeafSpec{CN: "admin/admin", URIs: []string{"spiffe://fleet.test/admin/admin"}})
	expired := pkitest.NewCA(t, catest.TrustDomain)
	_ = expired
	for name, cert := range map[string]*tls.Certificate{"another PKI": &fc} {
		t.Run(name, func(t *testing.T) {
			_, err := core.Client(t, cert).List(ctx, "", 10)
			if err == nil {
				t.Fatal("accepted")
			}
			var se *coreapi.StatusError
			if errors.As(err, &se) {
				t.Fatalf("got an HTTP answer (%v); the handshake should have failed", err)
			}
		})
	}
}

func TestRegistration(t *testing.T) {
	core := coretest.Start(t, "")
	proxy := core.Client(t, core.Proxy(t))

	t.Run("100 concurrent registrations of one ID give one record", func(t *testing.T) {
		var wg sync.WaitGroup
		var created atomic.Int32
		serials := make(chan string, 100)
		for range 100 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				d, c, err := proxy.Register(ctx, coreapi.RegisterRequest{Board: "bbb", HardwareID: "1813BBBK0123"})
				if err != nil {
					t.Error(err)
					return
				}
				if c {
					created.Add(1)
				}
				serials <- d.Serial
			}()
		}
		wg.Wait()
		close(serials)
		for s := range serials {
			if s != "39bf538987" {
				t.Fatalf("serial %s", s)
			}
		}
		if created.Load() != 1 {
			t.Fatalf("%d registrations said created", created.Load())
		}
		l, err := core.Client(t, core.Admin(t)).List(ctx, "", 1000)
		if err != nil || len(l.Devices) != 1 {
			t.Fatalf("%d records (%v)", len(l.Devices), err)
		}
	})
	t.Run("collision", func(t *testing.T) {
		first, _, err := proxy.Register(ctx, coreapi.RegisterRequest{Board: "rpi4", HardwareID: "0000000000070c6b"})
		if err != nil {
			t.Fatal(err)
		}
		_, _, err = proxy.Register(ctx, coreapi.RegisterRequest{Board: "rpi4", HardwareID: "000000000014d65c"})
		var se *coreapi.StatusError
		if !errors.As(err, &se) || se.Status != http.StatusConflict {
			t.Fatalf("colliding ID: %v", err)
		}
		after, err := core.Client(t, core.Admin(t)).Device(ctx, first.Serial)
		if err != nil || after.Generation != first.Generation || after.Hostname != first.Hostname {
			t.Fatalf("first device changed: %+v %v", after, err)
		}
		metrics := get(t, core.HTTP(t, nil), core.URL+"/metrics")
		if !strings.Contains(metrics, "prov_core_serial_collisions_total 1") {
			t.Error("collision not counted")
		}
	})
	t.Run("hostile input", func(t *testing.T) {
		for _, body := range []string{
			`{"board":"rpi4","hardwareId":""}`,
			`{"board":"rpi4","hardwareId":"` + strings.Repeat("1", 10000) + `"}`,
			`{"board":"rpi4","hardwareId":"10000000abcdef1\u0000"}`,
			`{"board":"bbb","hardwareId":"1813BBBK\r\n0123"}`,
			`{"board":"bbb","hardwareId":"../../etc/passwd"}`,
			`{"board":"bbb","hardwareId":"%2e%2e%2fBBBK"}`,
			`{"board":"bbb","hardwareId":"1813+BBBK#0123*"}`,
			`{"board":"rpi4","hardwareId":"١٠٠٠٠٠٠٠abcdef12"}`,
			`{"board":"bbb","hardwareId":"1813BBBK\u200f0123"}`,
			`{"board":"pi","hardwareId":"10000000abcdef12"}`,
			`{"board":"rpi4","hardwareId":"10000000abcdef12","group":"../x"}`,
			`{"board":"rpi4","hardwareId":"10000000abcdef12","extra":1}`,
			`not json`,
		} {
			before := count(t, core)
			r, _ := http.NewRequestWithContext(ctx, "POST", core.URL+"/v1/devices", strings.NewReader(body))
			resp, err := core.HTTP(t, core.Proxy(t)).Do(r)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			_ = resp.Body.Close()
			if resp.StatusCode != http.StatusBadRequest {
				t.Errorf("%.60q: status %d: %s", body, resp.StatusCode, b)
			}
			if count(t, core) != before {
				t.Errorf("%.60q: a record was written", body)
			}
		}
	})
}

func count(t *testing.T, core *coretest.Core) int {
	t.Helper()
	l, err := core.Client(t, core.Admin(t)).List(ctx, "", 1000)
	if err != nil {
		t.Fatal(err)
	}
	return len(l.Devices)
}

func get(t *testing.T, c *http.Client, url string) string {
	t.Helper()
	resp, err := c.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// The bundle a device fetches verifies as the device would verify it,
// carries the policy's data, and is served from one build (ETag, 304).
func TestBundleServing(t *testing.T) {
	core := coretest.Start(t, "")
	d := core.Register(t, "rpi4", coretest.RPi4(7))
	dev := core.Client(t, core.Enrolled(t, d.Serial, 0))
	body, etag, err := dev.Bundle(ctx, d.Serial, "")
	if err != nil {
		t.Fatal(err)
	}
	bundle, _ := io.ReadAll(body)
	_ = body.Close()
	roots, err := pki.LoadTrustBundle(core.RootCert())
	if err != nil {
		t.Fatal(err)
	}
	v, img, err := signedimage.VerifyBytes(bundle, signedimage.VerifyOptions{Roots: roots, Serial: d.Serial, MaxImageSize: imagespec.MaxImageSize})
	if err != nil {
		t.Fatalf("the device would refuse its bundle: %v", err)
	}
	if _, err := inspect.Inspect(bytes.NewReader(img), int64(len(img)), inspect.Expect{Rules: imagespec.DefaultRules(), Serial: d.Serial, Generation: v.Generation}); err != nil {
		t.Fatalf("inspection: %v", err)
	}
	if _, _, err := dev.Bundle(ctx, d.Serial, etag); !errors.Is(err, coreapi.ErrNotModified) {
		t.Fatalf("If-None-Match with the current ETag: %v", err)
	}
	// A change gives a new generation and a new ETag.
	admin := core.Client(t, core.Admin(t))
	if _, err := admin.SetDeviceData(ctx, d.Serial, v.Generation, coreapi.DataChange{Set: map[string]string{"/etc/prov/data/motd": "hi\n"}}); err != nil {
		t.Fatal(err)
	}
	body, etag2, err := dev.Bundle(ctx, d.Serial, etag)
	if err != nil || etag2 == etag {
		t.Fatalf("after a change: etag %s -> %s, %v", etag, etag2, err)
	}
	_ = body.Close()
}

func TestIfMatchAndRevocation(t *testing.T) {
	core := coretest.Start(t, "")
	d := core.Register(t, "rpi4", coretest.RPi4(9))
	admin := core.Client(t, core.Admin(t))
	change := coreapi.DataChange{Set: map[string]string{"/etc/prov/data/a": "1"}}
	if _, err := admin.SetDeviceData(ctx, d.Serial, d.Generation, change); err != nil {
		t.Fatal(err)
	}
	// A second admin still working from the old generation gets 412.
	_, err := admin.SetDeviceData(ctx, d.Serial, d.Generation, coreapi.DataChange{Set: map[string]string{"/etc/prov/data/a": "2"}})
	var se *coreapi.StatusError
	if !errors.As(err, &se) || se.Status != http.StatusPreconditionFailed {
		t.Fatalf("stale If-Match: %v", err)
	}
	// Immutable data cannot be set as data.
	_, err = admin.SetDeviceData(ctx, d.Serial, d.Generation+1, coreapi.DataChange{Set: map[string]string{"/etc/hostname": "evil"}})
	if !errors.As(err, &se) || se.Status != http.StatusBadRequest {
		t.Fatalf("setting /etc/hostname: %v", err)
	}
	dev := core.Client(t, core.Enrolled(t, d.Serial, 0))
	if _, err := dev.Device(ctx, d.Serial); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.Revoke(ctx, d.Serial, "stolen"); err != nil {
		t.Fatal(err)
	}
	if _, err := dev.Device(ctx, d.Serial); !errors.As(err, &se) || se.Status != http.StatusForbidden {
		t.Fatalf("the revoked device's next request: %v", err)
	}
	if _, _, err := dev.Bundle(ctx, d.Serial, ""); !errors.As(err, &se) || se.Status != http.StatusForbidden {
		t.Fatalf("the revoked device's bundle: %v", err)
	}
}

// Immutable data is computed once: a template change after registration
// changes new devices only; a restart keeps everything.
func TestImmutableFreezeAndRestart(t *testing.T) {
	c := catest.Shared(t)
	dir := t.TempDir()
	cfg := coretest.Config(t, c.Deployment, dir, "")
	core := coretest.Run(t, c, cfg, dir)
	before := core.Register(t, "rpi4", coretest.RPi4(11))
	admin := core.Client(t, core.Admin(t))
	if _, err := admin.SetDeviceData(ctx, before.Serial, before.Generation, coreapi.DataChange{Set: map[string]string{"/etc/prov/data/k": "v"}}); err != nil {
		t.Fatal(err)
	}
	core.Stop()

	raw, err := os.ReadFile(cfg)
	if err != nil {
		t.Fatal(err)
	}
	changed := strings.Replace(string(raw), `hostname: "{{.Board}}-{{.Serial}}"`, `hostname: "new-{{.Serial}}"`, 1)
	if err := os.WriteFile(cfg, []byte(changed), 0o600); err != nil {
		t.Fatal(err)
	}
	core = coretest.Run(t, c, cfg, dir)
	again := core.Register(t, "rpi4", coretest.RPi4(11))
	fresh := core.Register(t, "rpi4", coretest.RPi4(12))
	if again.Hostname != before.Hostname || again.Hostname != "rpi4-"+before.Serial {
		t.Fatalf("an existing device's hostname changed with the template: %s -> %s", before.Hostname, again.Hostname)
	}
	if fresh.Hostname != "new-"+fresh.Serial {
		t.Fatalf("a new device did not get the new template: %s", fresh.Hostname)
	}
	got, err := core.Client(t, core.Admin(t)).Device(ctx, before.Serial)
	if err != nil || got.Generation != before.Generation+1 || got.OwnData["/etc/prov/data/k"] != "v" {
		t.Fatalf("after restart: %+v %v", got, err)
	}
}

// A failing store (the real one, failing inside its transaction) answers
// 503 with Retry-After and writes nothing.
func TestFailingStoreAnswers503(t *testing.T) {
	var fail atomic.Bool
	core := coretest.Start(t, "", service.WithStoreOptions(store.Options{BeforeCommit: func(string) error {
		if fail.Load() {
			return errors.New("injected: no space left on device")
		}
		return nil
	}}))
	fail.Store(true)
	_, _, err := core.Client(t, core.Proxy(t)).Register(ctx, coreapi.RegisterRequest{Board: "rpi4", HardwareID: coretest.RPi4(21)})
	var se *coreapi.StatusError
	if !errors.As(err, &se) || se.Status != http.StatusServiceUnavailable || se.RetryAfter == "" {
		t.Fatalf("register on a failing store: %v", err)
	}
	fail.Store(false)
	if n := count(t, core); n != 0 {
		t.Fatalf("%d records after the failed write", n)
	}
	if _, created, err := core.Client(t, core.Proxy(t)).Register(ctx, coreapi.RegisterRequest{Board: "rpi4", HardwareID: coretest.RPi4(21)}); err != nil || !created {
		t.Fatalf("after recovery: %v %v", created, err)
	}
}

func TestRateLimit(t *testing.T) {
	core := coretest.Start(t, "limits: {device: {rate: 1, burst: 3}}\n")
	d := core.Register(t, "rpi4", coretest.RPi4(31))
	dev := core.Client(t, core.Enrolled(t, d.Serial, 0))
	var se *coreapi.StatusError
	limited := false
	for range 6 {
		if _, err := dev.Device(ctx, d.Serial); errors.As(err, &se) && se.Status == http.StatusTooManyRequests {
			limited = true
			if se.RetryAfter == "" {
				t.Fatal("429 without Retry-After")
			}
			break
		}
	}
	if !limited {
		t.Fatal("6 requests at once within a burst of 3: none limited")
	}
	// Another identity is not affected.
	if _, err := core.Client(t, core.Admin(t)).Device(ctx, d.Serial); err != nil {
		t.Fatal(err)
	}
}

// A client that opens a connection and sends nothing is dropped at the
// handshake timeout, not kept forever.
func TestSlowClientIsDropped(t *testing.T) {
	core := coretest.Start(t, "http: {readHeaderTimeout: 300ms, readTimeout: 300ms}\n")
	conn, err := net.Dial("tcp", strings.TrimPrefix(core.URL, "https://"))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = conn.Close() }()
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	start := time.Now()
	_, err = conn.Read(make([]byte, 1))
	if err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("the silent connection was not closed by the server (%v after %s)", err, time.Since(start))
	}
}
