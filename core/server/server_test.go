package server_test

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fleetprov/prov/core/contract/coreapi"
	"github.com/fleetprov/prov/core/contract/imagespec"
	"github.com/fleetprov/prov/core/registry/registrytest"
	"github.com/fleetprov/prov/core/server"
	"github.com/fleetprov/prov/core/store"
	"github.com/fleetprov/prov/internal/httpapi"
	"github.com/fleetprov/prov/pki"
	"github.com/fleetprov/prov/pki/pkitest"
	"github.com/fleetprov/prov/pki/signedimage"
)

// Two rpi4 hardware IDs whose serials collide (see core/store's tests).
const collideA, collideB = "0000000000070c6b", "000000000014d65c"

// env is core's API on a real registry and store, with callers of every
// role; requests go straight to the handler with the verified chain a TLS
// server would have put in the request.
type env struct {
	f                   *registrytest.Fixture
	s                   *server.Server
	admin, proxy, other []*x509.Certificate
	ready               error
}

func newEnv(t *testing.T, o server.Options, so store.Options) *env {
	t.Helper()
	f := registrytest.New(t, so)
	e := &env{f: f, admin: f.Chain(t, pki.RoleAdmin, "alice"), proxy: f.Chain(t, pki.RoleProxy, "line-1"),
		other: f.Chain(t, pki.RoleSigner, "images")}
	if o.Ready == nil {
		o.Ready = func() error { return e.ready }
	}
	e.s = server.New(f.Registry, o)
	return e
}

type answer struct {
	*httptest.ResponseRecorder
	err coreapi.Error
}

// do sends a request as the holder of chain (nil: no certificate).
func (e *env) do(t *testing.T, chain []*x509.Certificate, method, path, body string, header ...string) answer {
	t.Helper()
	r := httptest.NewRequest(method, path, strings.NewReader(body))
	r.RemoteAddr = "192.0.2.1:4711"
	if chain != nil {
		r.TLS = &tls.ConnectionState{VerifiedChains: [][]*x509.Certificate{chain}, PeerCertificates: chain[:1]}
	}
	for i := 0; i+1 < len(header); i += 2 {
		r.Header.Set(header[i], header[i+1])
	}
	w := httptest.NewRecorder()
	e.s.ServeHTTP(w, r)
	a := answer{ResponseRecorder: w}
	if w.Code >= 400 && (method != http.MethodHead || w.Body.Len() > 0) {
		if err := json.Unmarshal(w.Body.Bytes(), &a.err); err != nil || a.err.Code == "" {
			t.Fatalf("%s %s: %d with a body that is not the error shape: %q", method, path, w.Code, w.Body.String())
		}
	}
	return a
}

func (e *env) register(t *testing.T, hw string) coreapi.Device {
	t.Helper()
	a := e.do(t, e.proxy, "POST", "/v1/devices", `{"board":"rpi4","hardwareId":"`+hw+`"}`)
	if a.Code != http.StatusCreated && a.Code != http.StatusOK {
		t.Fatalf("register %s: %d %+v", hw, a.Code, a.err)
	}
	return decodeAs[coreapi.Device](t, a)
}

// enrolled is a device's chain whose certificate a proxy recorded at core,
// as at enrollment: core accepts the device only with a key it recorded.
func (e *env) enrolled(t *testing.T, serial string) []*x509.Certificate {
	t.Helper()
	chain := e.f.Chain(t, pki.RoleDevice, serial)
	e.recordIssued(t, serial, chain[0])
	return chain
}

// recordIssued records leaf as issued for serial, as the proxy does.
func (e *env) recordIssued(t *testing.T, serial string, leaf *x509.Certificate) {
	t.Helper()
	key, err := coreapi.KeySHA256(leaf.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	body, err := json.Marshal(coreapi.IssuedCertificate{Serial: leaf.SerialNumber.String(), KeySHA256: key, NotBefore: leaf.NotBefore, NotAfter: leaf.NotAfter})
	if err != nil {
		t.Fatal(err)
	}
	want(t, "record issued", e.do(t, e.proxy, "POST", "/v1/devices/"+serial+"/certificates", string(body)), http.StatusOK, "")
}

func decodeAs[T any](t *testing.T, a answer) T {
	t.Helper()
	var v T
	if err := json.Unmarshal(a.Body.Bytes(), &v); err != nil {
		t.Fatalf("answer %q: %v", a.Body.String(), err)
	}
	return v
}

// want checks a status and, for errors, the code.
func want(t *testing.T, what string, a answer, status int, code coreapi.ErrorCode) {
	t.Helper()
	if a.Code != status || (code != "" && a.err.Code != code) {
		t.Errorf("%s: %d %+v, want %d %s", what, a.Code, a.err, status, code)
	}
}

func TestRegister(t *testing.T) {
	e := newEnv(t, server.Options{}, store.Options{})
	a := e.do(t, e.proxy, "POST", "/v1/devices", `{"board":"rpi4","hardwareId":"10000000deadbeef"}`)
	want(t, "new device", a, http.StatusCreated, "")
	d := decodeAs[coreapi.Device](t, a)
	if pki.ValidateSerial(d.Serial) != nil || d.Generation != 1 || d.Status != coreapi.StatusActive || d.Hostname != "rpi4-"+d.Serial ||
		d.Topic != coreapi.DeviceTopic(d.Serial) || d.Data != nil {
		t.Errorf("proxy's view of a new device: %+v", d)
	}
	if devices, _ := e.f.Changes.Told(); !slices.Equal(devices, []string{d.Serial}) {
		t.Errorf("change worker told %v", devices)
	}
	a = e.do(t, e.proxy, "POST", "/v1/devices", `{"board":"rpi4","hardwareId":"10000000DEADBEEF"}`)
	want(t, "same ID again (another spelling)", a, http.StatusOK, "")
	if again := decodeAs[coreapi.Device](t, a); again.Serial != d.Serial || again.Generation != 1 {
		t.Errorf("idempotent answer: %+v", again)
	}
	if devices, _ := e.f.Changes.Told(); len(devices) != 0 {
		t.Errorf("an existing device is not a change: told %v", devices)
	}
	a = e.do(t, e.proxy, "POST", "/v1/devices", `{"board":"rpi4","hardwareId":"10000000000000b1","group":"line-b"}`)
	if g := decodeAs[coreapi.Device](t, a); a.Code != http.StatusCreated || g.Group != "line-b" || !strings.HasPrefix(g.Hostname, "b-") {
		t.Errorf("into line-b: %d %+v", a.Code, g)
	}

	e.register(t, collideA)
	want(t, "colliding ID", e.do(t, e.proxy, "POST", "/v1/devices", `{"board":"rpi4","hardwareId":"`+collideB+`"}`),
		http.StatusConflict, coreapi.CodeSerialCollision)

	for _, tc := range []struct {
		name, body string
		status     int
		code       coreapi.ErrorCode
		field      string
	}{
		{"unknown board", `{"board":"pdp11","hardwareId":"1"}`, 400, coreapi.CodeBadRequest, "board"},
		{"bad hardware ID", `{"board":"rpi4","hardwareId":"../../etc"}`, 400, coreapi.CodeBadRequest, "hardwareId"},
		{"empty hardware ID", `{"board":"rpi4","hardwareId":""}`, 400, coreapi.CodeBadRequest, "hardwareId"},
		{"unconfigured group", `{"board":"rpi4","hardwareId":"10000000000000b2","group":"` + strings.Repeat("x", 500) + `"}`, 400, coreapi.CodeBadRequest, "group"},
		{"unknown field", `{"board":"rpi4","hardwareId":"10000000000000b3","serial":"0000000000"}`, 400, coreapi.CodeBadRequest, `"serial": not a field`},
		// encoding/json alone took "Board" for "board", and the last of
		// two members.
		{"a name in another case", `{"Board":"rpi4","hardwareId":"10000000000000b3"}`, 400, coreapi.CodeBadRequest, `"Board": not a field`},
		{"a member twice", `{"board":"rpi4","board":"rpi4","hardwareId":"10000000000000b3"}`, 400, coreapi.CodeBadRequest, "board: given more than once"},
		{"a value of the wrong type", `{"board":"rpi4","hardwareId":1}`, 400, coreapi.CodeBadRequest, "hardwareId: want a string"},
		{"not JSON", `board=rpi4`, 400, coreapi.CodeBadRequest, "JSON"},
		{"two objects", `{"board":"rpi4","hardwareId":"10000000000000b4"}{}`, 400, coreapi.CodeBadRequest, "after the JSON"},
		{"over the body limit", `{"board":"rpi4","hardwareId":"` + strings.Repeat("1", coreapi.MaxRequestBody) + `"}`, 413, coreapi.CodeTooLarge, strconv.Itoa(coreapi.MaxRequestBody) + " bytes"},
	} {
		a := e.do(t, e.proxy, "POST", "/v1/devices", tc.body)
		want(t, tc.name, a, tc.status, tc.code)
		if !strings.Contains(a.err.Message, tc.field) || len(a.err.Message) > 400 {
			t.Errorf("%s: message %q should name %q and stay short", tc.name, a.err.Message, tc.field)
		}
	}
	if devices, _ := e.f.Changes.Told(); len(devices) != 2 {
		t.Errorf("refused registrations told the worker: %v", devices)
	}
}

func TestRolesAndIdentity(t *testing.T) {
	e := newEnv(t, server.Options{}, store.Options{})
	d := e.register(t, "10000000000000a1")
	self := e.enrolled(t, d.Serial)
	stranger := e.f.Chain(t, pki.RoleDevice, "0123456789")
	for _, route := range coreapi.Routes {
		if route.Public() {
			continue
		}
		var path string
		switch {
		case strings.Contains(route.Path, "{serial}"):
			path = route.URL(d.Serial)
		case strings.Contains(route.Path, "{group}"):
			path = route.URL("default")
		case strings.Contains(route.Path, "{rollout}"):
			path = route.URL("1")
		default:
			path = route.URL()
		}
		want(t, route.Name+" without a certificate", e.do(t, nil, route.Method, path, ""), http.StatusUnauthorized, coreapi.CodeUnauthenticated)
		for _, caller := range []struct {
			role  pki.Role
			chain []*x509.Certificate
		}{{pki.RoleAdmin, e.admin}, {pki.RoleProxy, e.proxy}, {pki.RoleDevice, self}, {pki.RoleSigner, e.other}} {
			a := e.do(t, caller.chain, route.Method, path, "")
			if route.Allows(caller.role) {
				if a.Code == http.StatusForbidden && a.err.Code == coreapi.CodeForbidden {
					t.Errorf("%s refused %s", route.Name, caller.role)
				}
			} else {
				want(t, fmt.Sprintf("%s as %s", route.Name, caller.role), a, http.StatusForbidden, coreapi.CodeForbidden)
			}
		}
	}
	// A device asking about another serial gets what a device that does not
	// exist gets.
	other := e.register(t, "10000000000000a2")
	for _, path := range []string{"/v1/devices/" + other.Serial, "/v1/devices/" + other.Serial + "/bundle", "/v1/devices/9999999999/bundle"} {
		a := e.do(t, self, "GET", path, "")
		want(t, "device asking for "+path, a, http.StatusNotFound, coreapi.CodeNotFound)
		if a.err.Message != "no such device" {
			t.Errorf("%s: message %q tells existing from missing", path, a.err.Message)
		}
	}
	want(t, "a stranger's certificate", e.do(t, stranger, "GET", "/v1/devices/"+d.Serial, ""), http.StatusNotFound, coreapi.CodeNotFound)
	for _, bad := range []string{"DEADBEEF00", "12345", "%00", "1a2b3c4d5e%2f"} {
		want(t, "malformed serial "+bad, e.do(t, e.admin, "GET", "/v1/devices/"+bad, ""), http.StatusNotFound, coreapi.CodeNotFound)
	}
	// The router cleans a path that climbs out (a redirect to the cleaned
	// path); it never reaches a device.
	if a := e.do(t, e.admin, "GET", "/v1/devices/..%2f..%2fetc", ""); a.Code == http.StatusOK {
		t.Errorf("path traversal answered %d", a.Code)
	}
}

func TestDeviceViewsAndBundle(t *testing.T) {
	e := newEnv(t, server.Options{}, store.Options{})
	d := e.register(t, "10000000000000a1")
	self := e.enrolled(t, d.Serial)

	a := e.do(t, self, "GET", "/v1/devices/"+d.Serial, "")
	mine := decodeAs[coreapi.Device](t, a)
	if a.Code != 200 || mine.Serial != d.Serial || mine.Generation != 1 || mine.Topic != d.Topic || mine.Board != "" || mine.Hostname != "" {
		t.Errorf("a device's view of itself: %d %+v", a.Code, mine)
	}
	a = e.do(t, e.admin, "GET", "/v1/devices/"+d.Serial, "")
	full := decodeAs[coreapi.Device](t, a)
	if a.Code != 200 || full.Board != "rpi4" || full.Data["/etc/prov/data/broker-url"] == "" || full.CreatedAt == nil {
		t.Errorf("admin's view: %d %+v", a.Code, full)
	}
	if len(full.Certificates) != 1 || full.Certificates[0].Serial != self[0].SerialNumber.String() {
		t.Errorf("the certificate the device used is not remembered: %+v", full.Certificates)
	}

	a = e.do(t, self, "GET", "/v1/devices/"+d.Serial+"/bundle", "")
	if a.Code != 200 || a.Header().Get("Content-Type") != coreapi.MediaTypeBundle || a.Header().Get(coreapi.HeaderGeneration) != "1" ||
		a.Header().Get("Content-Length") != strconv.Itoa(a.Body.Len()) {
		t.Fatalf("bundle: %d %v", a.Code, a.Header())
	}
	v, _, err := signedimage.VerifyBytes(a.Body.Bytes(), signedimage.VerifyOptions{Roots: e.f.Roots, Serial: d.Serial, Now: time.Now(), MaxImageSize: imagespec.MaxImageSize})
	if err != nil || v.Generation != 1 {
		t.Fatalf("the bundle does not verify as the device's: %v", err)
	}
	etag := a.Header().Get("ETag")
	want(t, "If-None-Match", e.do(t, self, "GET", "/v1/devices/"+d.Serial+"/bundle", "", "If-None-Match", etag), http.StatusNotModified, "")
	want(t, "proxy fetching the first bundle", e.do(t, e.proxy, "GET", "/v1/devices/"+d.Serial+"/bundle", ""), http.StatusOK, "")
	want(t, "bundle of a device that does not exist", e.do(t, e.proxy, "GET", "/v1/devices/0000000000/bundle", ""), http.StatusNotFound, coreapi.CodeNotFound)
}

func TestChanges(t *testing.T) {
	e := newEnv(t, server.Options{}, store.Options{})
	d := e.register(t, "10000000000000a1")
	e.f.Changes.Told()
	path := "/v1/devices/" + d.Serial + "/data"
	set := `{"set":{"/etc/prov/data/site":"hall 3\n"}}`

	want(t, "no If-Match", e.do(t, e.admin, "PATCH", path, set), http.StatusPreconditionRequired, coreapi.CodeIfMatchRequired)
	want(t, "bad If-Match", e.do(t, e.admin, "PATCH", path, set, "If-Match", "1"), http.StatusBadRequest, coreapi.CodeBadRequest)
	a := e.do(t, e.admin, "PATCH", path, set, "If-Match", `"1"`)
	if changed := decodeAs[coreapi.Device](t, a); a.Code != 200 || changed.Generation != 2 ||
		a.Header().Get("ETag") != e.do(t, e.admin, "GET", "/v1/devices/"+d.Serial, "").Header().Get("ETag") ||
		changed.OwnData["/etc/prov/data/site"] != "hall 3\n" {
		t.Fatalf("change: %d %v %+v", a.Code, a.Header(), changed)
	}
	want(t, "stale If-Match", e.do(t, e.admin, "PATCH", path, set, "If-Match", `"1"`), http.StatusPreconditionFailed, coreapi.CodeVersionConflict)
	for _, bad := range []string{`{"set":{"/etc/hostname":"evil"}}`, `{"set":{"/etc/prov/data/../shadow":"x"}}`, `{"set":{"/etc/prov/data/x":"` + strings.Repeat("a", 2<<20) + `"}}`} {
		a := e.do(t, e.admin, "PATCH", path, bad, "If-Match", `"2"`)
		if a.Code != http.StatusBadRequest && a.Code != http.StatusRequestEntityTooLarge {
			t.Errorf("data %.60s: %d %+v", bad, a.Code, a.err)
		}
	}
	want(t, "change of a device that does not exist", e.do(t, e.admin, "PATCH", "/v1/devices/0000000000/data", set, "If-Match", `"1"`), http.StatusNotFound, coreapi.CodeNotFound)

	a = e.do(t, e.admin, "POST", "/v1/devices/"+d.Serial+"/reprovision", "{}")
	if r := decodeAs[coreapi.Device](t, a); a.Code != 200 || r.Generation != 3 {
		t.Errorf("reprovision: %d %+v", a.Code, r)
	}
	if devices, _ := e.f.Changes.Told(); !slices.Equal(devices, []string{d.Serial, d.Serial}) {
		t.Errorf("told %v, want the device twice", devices)
	}

	a = e.do(t, e.admin, "GET", "/v1/devices/"+d.Serial+"/audit", "")
	events := decodeAs[[]coreapi.Event](t, a)
	if a.Code != 200 || len(events) != 3 || events[1].Actor != "spiffe://fleet.test/admin/alice" {
		t.Errorf("audit: %d %+v", a.Code, events)
	}
	if later := decodeAs[[]coreapi.Event](t, e.do(t, e.admin, "GET", "/v1/devices/"+d.Serial+"/audit?after="+strconv.FormatUint(events[1].Seq, 10), "")); len(later) != 1 {
		t.Errorf("audit after %d: %+v", events[1].Seq, later)
	}
	want(t, "audit after garbage", e.do(t, e.admin, "GET", "/v1/devices/"+d.Serial+"/audit?after=x", ""), http.StatusBadRequest, coreapi.CodeBadRequest)
}

func TestRevoke(t *testing.T) {
	e := newEnv(t, server.Options{}, store.Options{})
	d := e.register(t, "10000000000000a1")
	self := e.enrolled(t, d.Serial)
	want(t, "device call before the revoke", e.do(t, self, "GET", "/v1/devices/"+d.Serial, ""), http.StatusOK, "")

	want(t, "revoke without a body", e.do(t, e.admin, "POST", "/v1/devices/"+d.Serial+"/revoke", ""), http.StatusBadRequest, coreapi.CodeBadRequest)
	a := e.do(t, e.admin, "POST", "/v1/devices/"+d.Serial+"/revoke", `{"reason":"stolen"}`)
	if r := decodeAs[coreapi.Device](t, a); a.Code != 200 || r.Status != coreapi.StatusRevoked {
		t.Fatalf("revoke: %d %+v", a.Code, r)
	}
	if got := e.f.Revoked.List(); !slices.Equal(got, []string{self[0].SerialNumber.String()}) {
		t.Errorf("revoked at the CA: %v", got)
	}
	want(t, "revoked device", e.do(t, self, "GET", "/v1/devices/"+d.Serial+"/bundle", ""), http.StatusForbidden, coreapi.CodeRevoked)
	want(t, "proxy fetching a revoked device's bundle", e.do(t, e.proxy, "GET", "/v1/devices/"+d.Serial+"/bundle", ""), http.StatusConflict, coreapi.CodeRevoked)
	want(t, "change of a revoked device", e.do(t, e.admin, "POST", "/v1/devices/"+d.Serial+"/reprovision", "{}"), http.StatusConflict, coreapi.CodeRevoked)
	want(t, "revoke of a device that does not exist", e.do(t, e.admin, "POST", "/v1/devices/0000000000/revoke", `{"reason":"x"}`), http.StatusNotFound, coreapi.CodeNotFound)
}

// Finding 3 at the API: a certificate for an enrolled serial with a key
// core did not record (what a stolen proxy provisioner key mints with the
// attacker's key) is refused with a code the device can act on, and the
// device's audit trail says so; the enrolled key still works. A device
// whose enrollment never recorded a certificate has no key core accepts.
func TestKeyNotEnrolled(t *testing.T) {
	e := newEnv(t, server.Options{}, store.Options{})
	d := e.register(t, "10000000000000a1")
	self := e.enrolled(t, d.Serial)
	rogue := e.f.Chain(t, pki.RoleDevice, d.Serial)
	for _, path := range []string{"/v1/devices/" + d.Serial, "/v1/devices/" + d.Serial + "/bundle"} {
		a := e.do(t, rogue, "GET", path, "")
		want(t, "another key, "+path, a, http.StatusForbidden, coreapi.CodeKeyNotEnrolled)
		if !strings.Contains(a.err.Message, "enroll the device again") {
			t.Errorf("%s: message %q does not say what to do", path, a.err.Message)
		}
		want(t, "the enrolled key, "+path, e.do(t, self, "GET", path, ""), http.StatusOK, "")
	}
	unfinished := e.register(t, "10000000000000a2")
	want(t, "a device with no certificate recorded", e.do(t, e.f.Chain(t, pki.RoleDevice, unfinished.Serial), "GET", "/v1/devices/"+unfinished.Serial+"/bundle", ""),
		http.StatusForbidden, coreapi.CodeKeyNotEnrolled)
	events := decodeAs[[]coreapi.Event](t, e.do(t, e.admin, "GET", "/v1/devices/"+d.Serial+"/audit", ""))
	found := false
	for _, ev := range events {
		found = found || (ev.Action == "key not enrolled: possible key compromise" && ev.Detail["serial"] == rogue[0].SerialNumber.String())
	}
	if !found {
		t.Errorf("the refused key is not in the device's audit trail: %+v", events)
	}
	full := decodeAs[coreapi.Device](t, e.do(t, e.admin, "GET", "/v1/devices/"+d.Serial, ""))
	if len(full.Certificates) != 1 || full.Certificates[0].Serial != self[0].SerialNumber.String() {
		t.Errorf("certificates seen: %+v (the refused one must not be among them)", full.Certificates)
	}
}

// A certificate revoked at the CA after its connection was made is refused
// on that connection's next request, not only at the next handshake.
func TestRevokedOnAnOpenConnection(t *testing.T) {
	var revoked atomic.Pointer[x509.Certificate]
	e := newEnv(t, server.Options{CheckRevoked: func(c *x509.Certificate) error {
		if r := revoked.Load(); r != nil && r.SerialNumber.Cmp(c.SerialNumber) == 0 {
			return errors.New("on the CRL")
		}
		return nil
	}}, store.Options{})
	want(t, "before", e.do(t, e.admin, "GET", "/v1/devices", ""), http.StatusOK, "")
	revoked.Store(e.admin[0])
	want(t, "after the CRL lists it", e.do(t, e.admin, "GET", "/v1/devices", ""), http.StatusUnauthorized, coreapi.CodeUnauthenticated)
	want(t, "health needs no certificate", e.do(t, e.admin, "GET", "/healthz", ""), http.StatusOK, "")
}

func TestRecordIssuedAndList(t *testing.T) {
	e := newEnv(t, server.Options{}, store.Options{})
	d := e.register(t, "10000000000000a1")
	e.register(t, "10000000000000a2")
	e.register(t, "10000000000000a3")
	path := "/v1/devices/" + d.Serial + "/certificates"
	key := strings.Repeat("ab", 32)
	a := e.do(t, e.proxy, "POST", path, `{"serial":"1234567","keySha256":"`+key+`","notBefore":"2026-01-01T00:00:00Z","notAfter":"2027-01-01T00:00:00Z"}`)
	if r := decodeAs[coreapi.Device](t, a); a.Code != 200 || len(r.Issued) != 1 || r.Issued[0].IssuedBy != "spiffe://fleet.test/proxy/line-1" {
		t.Errorf("record issued: %d %+v", a.Code, r)
	}
	for _, tc := range []struct{ name, body, field string }{
		{"serial not decimal", `{"serial":"0x12","keySha256":"` + key + `"}`, "serial"},
		{"serial zero", `{"serial":"0","keySha256":"` + key + `"}`, "serial"},
		{"short key digest", `{"serial":"12","keySha256":"abcd"}`, "keySha256"},
		{"key digest not hex", `{"serial":"12","keySha256":"` + strings.Repeat("zz", 32) + `"}`, "keySha256"},
	} {
		a := e.do(t, e.proxy, "POST", path, tc.body)
		want(t, tc.name, a, http.StatusBadRequest, coreapi.CodeBadRequest)
		if !strings.HasPrefix(a.err.Message, tc.field+":") {
			t.Errorf("%s: message %q does not name %s", tc.name, a.err.Message, tc.field)
		}
	}
	want(t, "unknown device", e.do(t, e.proxy, "POST", "/v1/devices/0000000000/certificates", `{"serial":"12","keySha256":"`+key+`"}`), http.StatusNotFound, coreapi.CodeNotFound)

	var seen []string
	after := ""
	for range 4 {
		a := e.do(t, e.admin, "GET", "/v1/devices?limit=2&after="+after, "")
		page := decodeAs[coreapi.DeviceList](t, a)
		for _, d := range page.Devices {
			seen = append(seen, d.Serial)
		}
		if after = page.Next; after == "" {
			break
		}
	}
	if len(seen) != 3 || !slices.IsSorted(seen) {
		t.Errorf("listed %v", seen)
	}
	for _, q := range []string{"limit=0", "limit=1001", "limit=x", "after=../x"} {
		want(t, "list "+q, e.do(t, e.admin, "GET", "/v1/devices?"+q, ""), http.StatusBadRequest, coreapi.CodeBadRequest)
	}
}

func TestGroups(t *testing.T) {
	e := newEnv(t, server.Options{}, store.Options{})
	e.register(t, "10000000000000a1")
	a := e.do(t, e.admin, "GET", "/v1/groups/default", "")
	g := decodeAs[coreapi.Group](t, a)
	if a.Code != 200 || g.Name != "default" || a.Header().Get("ETag") != coreapi.IfMatch(g.Version) {
		t.Fatalf("group: %d %+v", a.Code, g)
	}
	set := `{"set":{"/etc/prov/data/ntp":"pool.ntp.org\n"}}`
	a = e.do(t, e.admin, "PATCH", "/v1/groups/default/data", set, "If-Match", coreapi.IfMatch(g.Version))
	if ng := decodeAs[coreapi.Group](t, a); a.Code != 200 || ng.Version != g.Version+1 {
		t.Fatalf("group change: %d %+v", a.Code, ng)
	}
	if _, groups := e.f.Changes.Told(); !slices.Equal(groups, []string{"default"}) {
		t.Errorf("told groups %v", groups)
	}
	want(t, "stale group version", e.do(t, e.admin, "PATCH", "/v1/groups/default/data", set, "If-Match", coreapi.IfMatch(g.Version)), http.StatusPreconditionFailed, coreapi.CodeVersionConflict)
	want(t, "bad group data", e.do(t, e.admin, "PATCH", "/v1/groups/default/data", `{"set":{"/etc/machine-id":"x"}}`, "If-Match", coreapi.IfMatch(g.Version+1)), http.StatusBadRequest, coreapi.CodeBadRequest)
	// An unknown group is 404 before anything else is looked at.
	for _, tc := range []struct{ method, path string }{{"GET", "/v1/groups/nope"}, {"PATCH", "/v1/groups/nope/data"}, {"GET", "/v1/groups/nope/audit"}} {
		want(t, tc.method+" "+tc.path, e.do(t, e.admin, tc.method, tc.path, "garbage"), http.StatusNotFound, coreapi.CodeNotFound)
	}
	a = e.do(t, e.admin, "GET", "/v1/groups/default/audit", "")
	if ev := decodeAs[[]coreapi.Event](t, a); a.Code != 200 || len(ev) != 2 || ev[1].Action == "" {
		t.Errorf("group audit: %d %+v", a.Code, ev)
	}
}

func TestBackupHealthAndMetrics(t *testing.T) {
	e := newEnv(t, server.Options{}, store.Options{})
	e.register(t, "10000000000000a1")
	a := e.do(t, e.admin, "GET", "/v1/backup", "")
	if a.Code != 200 || a.Header().Get(coreapi.HeaderBackupDevices) != "1" || a.Header().Get(coreapi.HeaderBackupGroups) != "2" ||
		a.Header().Get("Content-Length") != strconv.Itoa(a.Body.Len()) || a.Body.Len() < 4096 {
		t.Errorf("backup: %d %v, %d bytes", a.Code, a.Header(), a.Body.Len())
	}
	want(t, "healthz", e.do(t, nil, "GET", "/healthz", ""), http.StatusOK, "")
	want(t, "readyz", e.do(t, nil, "GET", "/readyz", ""), http.StatusOK, "")
	e.ready = errors.New("broker down")
	want(t, "readyz with the broker down", e.do(t, nil, "GET", "/readyz", ""), http.StatusServiceUnavailable, coreapi.CodeNotReady)
	a = e.do(t, nil, "GET", "/metrics", "")
	if a.Code != 200 || !strings.Contains(a.Body.String(), `prov_core_requests_total{route="register",status="2xx"} 1`) ||
		!strings.Contains(a.Body.String(), `prov_core_requests_total{route="readyz",status="5xx"} 1`) {
		t.Errorf("metrics: %d\n%.2000s", a.Code, a.Body.String())
	}
	want(t, "no such route", e.do(t, e.admin, "GET", "/v2/devices", ""), http.StatusNotFound, coreapi.CodeNotFound)
	want(t, "wrong method", e.do(t, e.admin, "DELETE", "/v1/devices", ""), http.StatusMethodNotAllowed, coreapi.CodeMethodNotAllowed)
}

// Warnings (core's certificates near their end) are in a ready answer's
// body; they do not make core unready.
func TestReadyzWarnings(t *testing.T) {
	var warnings []string
	e := newEnv(t, server.Options{Warnings: func() []string { return warnings }}, store.Options{})
	for _, w := range [][]string{nil, {"the tls certificate ends at 2026-12-01T00:00:00Z (in 9m0s); not renewed yet"}} {
		warnings = w
		a := e.do(t, nil, "GET", "/readyz", "")
		got := decodeAs[httpapi.Readiness](t, a)
		if a.Code != http.StatusOK || got.Status != "ready" || strings.Join(got.Warnings, "|") != strings.Join(w, "|") {
			t.Errorf("readyz with warnings %q: %d %s", w, a.Code, a.Body.String())
		}
	}
}

func TestRateLimit(t *testing.T) {
	e := newEnv(t, server.Options{Limits: map[pki.Role]server.Limit{pki.RoleAdmin: {Rate: 0.01, Burst: 2}}}, store.Options{})
	for i := range 2 {
		want(t, fmt.Sprintf("request %d within the burst", i), e.do(t, e.admin, "GET", "/v1/devices", ""), http.StatusOK, "")
	}
	a := e.do(t, e.admin, "GET", "/v1/devices", "")
	want(t, "over the limit", a, http.StatusTooManyRequests, coreapi.CodeRateLimited)
	// The refusal names the limit, with its values.
	if !strings.Contains(a.err.Message, "over the limit of 0.01 requests a second (bursts of 2)") {
		t.Errorf("a refusal for the rate as %q", a.err.Message)
	}
	if ra, err := strconv.Atoi(a.Header().Get("Retry-After")); err != nil || ra < 1 {
		t.Errorf("Retry-After %q", a.Header().Get("Retry-After"))
	}
	want(t, "another admin has its own bucket", e.do(t, e.f.Chain(t, pki.RoleAdmin, "bob"), "GET", "/v1/devices", ""), http.StatusOK, "")
}

// A write the disk refuses is 503 with Retry-After, and nothing is
// written; the next write, once the disk is back, works.
func TestStoreUnavailable(t *testing.T) {
	var fail atomic.Bool
	e := newEnv(t, server.Options{}, store.Options{BeforeCommit: func(op string) error {
		if fail.Load() {
			return errors.New("injected: no space left on device")
		}
		return nil
	}})
	fail.Store(true)
	a := e.do(t, e.proxy, "POST", "/v1/devices", `{"board":"rpi4","hardwareId":"10000000000000a1"}`)
	want(t, "register on a full disk", a, http.StatusServiceUnavailable, coreapi.CodeUnavailable)
	if a.Header().Get("Retry-After") == "" || strings.Contains(a.err.Message, "injected") {
		t.Errorf("answer %v %+v: want Retry-After and no internal detail", a.Header(), a.err)
	}
	fail.Store(false)
	list := decodeAs[coreapi.DeviceList](t, e.do(t, e.admin, "GET", "/v1/devices", ""))
	if len(list.Devices) != 0 {
		t.Fatalf("a refused write left %d devices", len(list.Devices))
	}
	want(t, "register once the disk is back", e.do(t, e.proxy, "POST", "/v1/devices", `{"board":"rpi4","hardwareId":"10000000000000a1"}`), http.StatusCreated, "")
}

// The TLS configuration admits devices with their certificate and health
// checks without one, over a real handshake.
func TestOverTLS(t *testing.T) {
	e := newEnv(t, server.Options{}, store.Options{})
	d := e.register(t, "10000000000000a1")
	ts := e.serveTLS(t)
	devCert := e.f.CA.TLSCert(t, pkitestSpec("device", d.Serial, x509.ExtKeyUsageClientAuth))
	e.recordIssued(t, d.Serial, devCert.Leaf)
	client := func(cert *tls.Certificate) *http.Client {
		cfg := pki.ClientTLSConfig(nil, e.f.Roots, pki.ClientOptions{ServerName: "localhost", ServerRoles: []pki.Role{pki.RoleCore}})
		if cert != nil {
			cfg.Certificates = []tls.Certificate{*cert}
		}
		return &http.Client{Transport: &http.Transport{TLSClientConfig: cfg}}
	}
	for _, tc := range []struct {
		name   string
		cert   *tls.Certificate
		path   string
		status int
	}{
		{"device, its record", &devCert, "/v1/devices/" + d.Serial, 200},
		{"no certificate, health", nil, "/healthz", 200},
		{"no certificate, a record", nil, "/v1/devices/" + d.Serial, 401},
	} {
		resp, err := client(tc.cert).Get(ts.URL + tc.path)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		_ = resp.Body.Close()
		if resp.StatusCode != tc.status {
			t.Errorf("%s: %d, want %d", tc.name, resp.StatusCode, tc.status)
		}
	}
}

// serveTLS serves the API over TLS with a core certificate, as core does;
// closed when the test ends.
func (e *env) serveTLS(t *testing.T) *httptest.Server {
	t.Helper()
	coreCert, coreKey := e.f.CA.KeyPair(t, pkitestSpec("core", "main", x509.ExtKeyUsageServerAuth))
	kp, err := pki.LoadKeyPair(coreCert, coreKey)
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewUnstartedServer(e.s)
	ts.TLS = server.TLSConfig(kp, e.f.Roots, nil)
	ts.StartTLS()
	t.Cleanup(ts.Close)
	return ts
}

// pkitestSpec is a leaf for role/name; a server's is valid for localhost.
func pkitestSpec(role, name string, eku x509.ExtKeyUsage) pkitest.LeafSpec {
	id := "spiffe://" + registrytest.TrustDomain + "/" + role + "/" + name
	if role == "device" {
		return pkitest.LeafSpec{CN: name, URIs: []string{id}, EKU: []x509.ExtKeyUsage{eku}}
	}
	return pkitest.LeafSpec{CN: role + "/" + name, URIs: []string{id}, DNS: []string{"localhost"}, IPs: []string{"127.0.0.1"}, EKU: []x509.ExtKeyUsage{eku}}
}
