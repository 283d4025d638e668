package server_test

import (
	"bufio"
	"bytes"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net/http"
	"net/textproto"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/fleetprov/prov/core/contract/coreapi"
	"github.com/fleetprov/prov/core/server"
	"github.com/fleetprov/prov/core/store"
	"github.com/fleetprov/prov/internal/testenv"
	"github.com/fleetprov/prov/pki"
)

// methods are the methods every path is tried with.
var methods = []string{"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}

// routeEnv is env with a registered, enrolled device, and for each route
// a caller it serves and its URL.
type routeEnv struct {
	*env
	serial string
	self   []*x509.Certificate
}

func newRouteEnv(t *testing.T) *routeEnv {
	t.Helper()
	// A device's rate limit is not what these tests are about.
	e := newEnv(t, server.Options{Limits: map[pki.Role]server.Limit{pki.RoleDevice: {Rate: 1000, Burst: 1000}}}, store.Options{})
	d := e.register(t, "10000000000000a1")
	// A rollout, for the rollout routes ({rollout} is 1), aborted so that
	// the group's data can change (its version is 2).
	if a := e.do(t, e.admin, "POST", "/v1/groups/default/rollouts", `{"set":{"/etc/prov/data/x":"1"}}`, "If-Match", `"0"`); a.Code != http.StatusCreated {
		t.Fatalf("start a rollout: %d %s", a.Code, a.Body)
	}
	if a := e.do(t, e.admin, "POST", "/v1/rollouts/1/abort", `{}`, "If-Match", `"1"`); a.Code != http.StatusOK {
		t.Fatalf("abort it: %d %s", a.Code, a.Body)
	}
	return &routeEnv{env: e, serial: d.Serial, self: e.enrolled(t, d.Serial)}
}

func (e *routeEnv) url(r coreapi.Route) string {
	var vars []string
	for _, v := range []string{coreapi.VarSerial, coreapi.VarGroup, coreapi.VarRollout} {
		if i := strings.Index(r.Path, "{"+v+"}"); i >= 0 {
			vars = append(vars, map[string]string{coreapi.VarSerial: e.serial, coreapi.VarGroup: "default", coreapi.VarRollout: "1"}[v])
		}
	}
	return r.URL(vars...)
}

// caller is a certificate of the route's first role (none for a public
// route).
func (e *routeEnv) caller(r coreapi.Route) []*x509.Certificate {
	if r.Public() {
		return nil
	}
	return map[pki.Role][]*x509.Certificate{pki.RoleAdmin: e.admin, pki.RoleProxy: e.proxy, pki.RoleDevice: e.self}[r.Roles[0]]
}

// Issue 14: HEAD was 405 on every route, /healthz included, and 405 had
// no Allow. From the route table, so that a new route is covered without a
// new test: every method a path does not serve is 405 with Allow listing
// the ones it does, in the JSON error body; HEAD is GET without the body.
func TestEveryRouteAnswersItsMethods(t *testing.T) {
	e := newRouteEnv(t)
	seen := map[string]bool{}
	for _, route := range coreapi.Routes {
		if seen[route.Path] {
			continue
		}
		seen[route.Path] = true
		allowed := coreapi.Methods(coreapi.Routes, route.Path)
		for _, m := range methods {
			if slices.Contains(allowed, m) {
				continue
			}
			a := e.do(t, e.caller(route), m, e.url(route), "")
			if a.Code != http.StatusMethodNotAllowed || a.err.Code != coreapi.CodeMethodNotAllowed || a.Header().Get("Allow") != strings.Join(allowed, ", ") {
				t.Errorf("%s %s: %d Allow %q %+v, want 405 Allow %q", m, route.Path, a.Code, a.Header().Get("Allow"), a.err, strings.Join(allowed, ", "))
			}
		}
	}
	for _, route := range coreapi.Routes {
		if route.Method != http.MethodGet {
			continue
		}
		get := e.do(t, e.caller(route), "GET", e.url(route), "")
		head := e.do(t, e.caller(route), "HEAD", e.url(route), "")
		if get.Code != http.StatusOK || head.Code != get.Code || head.Body.Len() != 0 {
			t.Errorf("%s: GET %d, HEAD %d with %d bytes of body", route.Name, get.Code, head.Code, head.Body.Len())
		}
		for _, f := range []string{"Content-Type", "ETag", "Cache-Control", coreapi.HeaderGeneration} {
			if head.Header().Get(f) != get.Header().Get(f) {
				t.Errorf("%s: HEAD %s %q, GET %q", route.Name, f, head.Header().Get(f), get.Header().Get(f))
			}
		}
		if (head.Header().Get("Content-Length") == "") != (get.Header().Get("Content-Length") == "") {
			t.Errorf("%s: Content-Length GET %q HEAD %q", route.Name, get.Header().Get("Content-Length"), head.Header().Get("Content-Length"))
		}
	}
	for _, path := range []string{"/v1", "/v1/nothing", "/v1/devices/" + e.serial + "/nothing", "/healthz/x"} {
		for _, m := range []string{"GET", "POST"} {
			if a := e.do(t, e.admin, m, path, ""); a.Code != http.StatusNotFound || a.err.Code != coreapi.CodeNotFound {
				t.Errorf("%s %s: %d %+v", m, path, a.Code, a.err)
			}
		}
	}
}

// Issue 14: If-None-Match with a weak tag, a list or * gave 200, If-Match:
// * gave 400, GET /v1/devices/{serial} had no ETag. For every versioned
// route of the table: a GET has an ETag and answers If-None-Match (RFC
// 9110: weak comparison, lists, *) with 304; a change needs If-Match (428
// without), takes * and lists (strong comparison), and a stale one is 412.
func TestEveryVersionedRouteIsConditional(t *testing.T) {
	e := newRouteEnv(t)
	for _, route := range coreapi.Routes {
		if !route.Versioned || rolloutChanges[route.Name] {
			continue
		}
		url, who := e.url(route), e.caller(route)
		if route.Method == http.MethodGet {
			a := e.do(t, who, "GET", url, "")
			tag := a.Header().Get("ETag")
			if a.Code != http.StatusOK || tag == "" || strings.HasPrefix(tag, "W/") {
				t.Errorf("%s: %d, ETag %q: want a strong one", route.Name, a.Code, tag)
				continue
			}
			for _, inm := range []string{tag, "W/" + tag, `"other", ` + tag, `W/"x",` + tag + `, "y"`, "*"} {
				for _, m := range []string{"GET", "HEAD"} {
					a := e.do(t, who, m, url, "", "If-None-Match", inm)
					if a.Code != http.StatusNotModified || a.Body.Len() != 0 || a.Header().Get("ETag") != tag {
						t.Errorf("%s: %s If-None-Match %s: %d ETag %q, want 304", route.Name, m, inm, a.Code, a.Header().Get("ETag"))
					}
				}
			}
			for _, inm := range []string{`"other"`, `W/"other", "x"`} {
				if a := e.do(t, who, "GET", url, "", "If-None-Match", inm); a.Code != http.StatusOK {
					t.Errorf("%s: If-None-Match %s: %d, want 200", route.Name, inm, a.Code)
				}
			}
			want(t, route.Name+" If-None-Match malformed", e.do(t, who, "GET", url, "", "If-None-Match", "abc"), http.StatusBadRequest, coreapi.CodeBadRequest)
			continue
		}
		// A change: the ETag of the GET at the same path without /data.
		read := e.do(t, who, "GET", strings.TrimSuffix(url, "/data"), "")
		tag := read.Header().Get("ETag")
		const change = `{"set":{"/etc/prov/data/site":"x\n"}}`
		want(t, route.Name+" without If-Match", e.do(t, who, route.Method, url, change), http.StatusPreconditionRequired, coreapi.CodeIfMatchRequired)
		for _, stale := range []string{`"999"`, "W/" + tag, `"998", "999"`} {
			want(t, route.Name+" If-Match "+stale, e.do(t, who, route.Method, url, change, "If-Match", stale), http.StatusPreconditionFailed, coreapi.CodeVersionConflict)
		}
		want(t, route.Name+" If-Match malformed", e.do(t, who, route.Method, url, change, "If-Match", "1"), http.StatusBadRequest, coreapi.CodeBadRequest)
		for _, im := range []string{"*", `"999", %s`} {
			im = strings.ReplaceAll(im, "%s", tag) // the tag as it is now
			a := e.do(t, who, route.Method, url, change, "If-Match", im)
			if a.Code != http.StatusOK || a.Header().Get("ETag") == "" {
				t.Errorf("%s: If-Match %s: %d %+v", route.Name, im, a.Code, a.err)
				continue
			}
			after := e.do(t, who, "GET", strings.TrimSuffix(url, "/data"), "")
			if a.Header().Get("ETag") != after.Header().Get("ETag") || after.Header().Get("ETag") == tag {
				t.Errorf("%s: the change's ETag %q, a GET after it %q, before %q", route.Name, a.Header().Get("ETag"), after.Header().Get("ETag"), tag)
			}
			tag = after.Header().Get("ETag")
		}
	}
}

// A device's ETag changes with what has no version too (here: revoked),
// so that If-None-Match never hides it; the generation still works as
// If-Match, as before.
func TestDeviceETag(t *testing.T) {
	e := newRouteEnv(t)
	path := "/v1/devices/" + e.serial
	a := e.do(t, e.admin, "GET", path, "")
	tag := a.Header().Get("ETag")
	gen := decodeAs[coreapi.Device](t, a).Generation
	if !strings.HasPrefix(tag, coreapi.IfMatch(gen)[:2]) {
		t.Errorf("ETag %q does not start with the generation %d", tag, gen)
	}
	want(t, "If-Match the generation", e.do(t, e.admin, "PATCH", path+"/data", `{"set":{"/etc/prov/data/a":"1"}}`, "If-Match", coreapi.IfMatch(gen)), http.StatusOK, "")
	tag = e.do(t, e.admin, "GET", path, "").Header().Get("ETag")
	want(t, "revoke", e.do(t, e.admin, "POST", path+"/revoke", `{"reason":"stolen"}`), http.StatusOK, "")
	if a := e.do(t, e.admin, "GET", path, "", "If-None-Match", tag); a.Code != http.StatusOK || decodeAs[coreapi.Device](t, a).Status != coreapi.StatusRevoked {
		t.Errorf("If-None-Match the ETag before the revoke: %d, want 200 with the revoked status", a.Code)
	}
}

// Issue 14: the revoke route accepted {} without a reason.
func TestRevokeNeedsAReason(t *testing.T) {
	e := newRouteEnv(t)
	for _, body := range []string{`{}`, `{"reason":""}`, `{"reason":" \t"}`} {
		a := e.do(t, e.admin, "POST", "/v1/devices/"+e.serial+"/revoke", body)
		want(t, "revoke "+body, a, http.StatusBadRequest, coreapi.CodeBadRequest)
		if !strings.HasPrefix(a.err.Message, "reason:") {
			t.Errorf("revoke %s: %q does not name reason", body, a.err.Message)
		}
	}
	if d := decodeAs[coreapi.Device](t, e.do(t, e.admin, "GET", "/v1/devices/"+e.serial, "")); d.Status != coreapi.StatusActive {
		t.Errorf("a refused revoke revoked: %+v", d.Status)
	}
}

// The findings were made with curl against a running core; so is this:
// curl over mTLS to a real TLS server, what curl sends for HEAD, lists and
// weak tags, and the headers it gets.
func TestWithCurl(t *testing.T) {
	curl := testenv.Tool(t, "curl", "apt-get install curl")
	e := newRouteEnv(t)
	ts := e.serveTLS(t)
	// By name, as a client reaches core: the server's certificate is
	// chosen by SNI, which curl sends for names only.
	base := strings.Replace(ts.URL, "127.0.0.1", "localhost", 1)
	port := base[strings.LastIndexByte(base, ':')+1:]
	adminSpec := pkitestSpec("admin", "alice", x509.ExtKeyUsageClientAuth)
	adminSpec.DNS, adminSpec.IPs = nil, nil // only services have names
	adminCert, adminKey := e.f.CA.KeyPair(t, adminSpec)
	devCert, devKey := e.f.CA.KeyPair(t, pkitestSpec("device", e.serial, x509.ExtKeyUsageClientAuth))
	data, err := os.ReadFile(devCert)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(data)
	leaf, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	e.recordIssued(t, e.serial, leaf)
	rootFile := t.TempDir() + "/root.pem"
	if err := os.WriteFile(rootFile, e.f.CA.RootPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	type answer struct {
		status int
		header http.Header
		body   string
	}
	run := func(cert, key string, args ...string) answer {
		t.Helper()
		args = append([]string{"--silent", "--show-error", "--include", "--resolve", "localhost:" + port + ":127.0.0.1",
			"--cacert", rootFile, "--cert", cert, "--key", key}, args...)
		out, err := exec.Command(curl, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("curl %v: %v\n%s", args, err, out)
		}
		r := bufio.NewReader(bytes.NewReader(out))
		tp := textproto.NewReader(r)
		line, err := tp.ReadLine()
		if err != nil {
			t.Fatalf("curl %v: %q", args, out)
		}
		var a answer
		if f := strings.Fields(line); len(f) < 2 {
			t.Fatalf("curl %v: status line %q", args, line)
		} else if a.status, err = strconv.Atoi(f[1]); err != nil {
			t.Fatalf("curl %v: status line %q", args, line)
		}
		h, err := tp.ReadMIMEHeader()
		if err != nil {
			t.Fatalf("curl %v: headers: %v in %q", args, err, out)
		}
		a.header = http.Header(h)
		rest := new(strings.Builder)
		_, _ = r.WriteTo(rest)
		a.body = rest.String()
		return a
	}
	dev := base + "/v1/devices/" + e.serial
	got := run(adminCert, adminKey, dev)
	tag := got.header.Get("ETag")
	if got.status != 200 || tag == "" {
		t.Fatalf("GET the device: %d %v", got.status, got.header)
	}
	for _, tc := range []struct {
		name   string
		args   []string
		status int
		check  func(answer) bool
	}{
		{"HEAD /healthz", []string{"--head", base + "/healthz"}, 200, func(a answer) bool { return a.body == "" && a.header.Get("Content-Length") != "" }},
		{"HEAD the device", []string{"--head", dev}, 200, func(a answer) bool { return a.body == "" && a.header.Get("ETag") == tag }},
		{"If-None-Match weak", []string{"-H", "If-None-Match: W/" + tag, dev}, 304, func(a answer) bool { return a.body == "" }},
		{"If-None-Match a list", []string{"-H", `If-None-Match: "x", ` + tag, dev}, 304, nil},
		{"If-None-Match *", []string{"-H", "If-None-Match: *", dev}, 304, nil},
		{"If-Match *", []string{"-X", "PATCH", "-H", "If-Match: *", "--data", `{"set":{"/etc/prov/data/a":"1"}}`, dev + "/data"}, 200, nil},
		{"405 with Allow", []string{"-X", "DELETE", dev}, 405, func(a answer) bool {
			var e coreapi.Error
			return a.header.Get("Allow") == "GET, HEAD" && json.Unmarshal([]byte(a.body), &e) == nil && e.Code == coreapi.CodeMethodNotAllowed
		}},
		{"404 in JSON", []string{base + "/nothing"}, 404, func(a answer) bool { return a.header.Get("Content-Type") == coreapi.MediaTypeJSON }},
		{"revoke without a reason", []string{"--data", "{}", dev + "/revoke"}, 400, func(a answer) bool { return strings.Contains(a.body, "reason:") }},
	} {
		a := run(adminCert, adminKey, tc.args...)
		if a.status != tc.status || (tc.check != nil && !tc.check(a)) {
			t.Errorf("%s: %d %v %q, want %d", tc.name, a.status, a.header, a.body, tc.status)
		}
	}
	// The device's own bundle: what it was given is not sent again.
	b := run(devCert, devKey, "--head", dev+"/bundle")
	if b.status != 200 || b.header.Get("ETag") == "" || b.header.Get("Content-Length") == "" {
		t.Fatalf("HEAD the bundle: %d %v", b.status, b.header)
	}
	if a := run(devCert, devKey, "-H", "If-None-Match: "+b.header.Get("ETag"), dev+"/bundle"); a.status != 304 || a.body != "" {
		t.Errorf("the bundle If-None-Match its ETag: %d %q", a.status, a.body)
	}
}

// rolloutChanges are the versioned routes that change a rollout, or start
// one: their version is a rollout's rev or a group's, read elsewhere than
// at their own path (TestRolloutRoutesAreConditional).
var rolloutChanges = map[string]bool{
	coreapi.RouteStartRollout.Name: true, coreapi.RoutePauseRollout.Name: true, coreapi.RouteResumeRollout.Name: true,
	coreapi.RouteForceRollout.Name: true, coreapi.RouteAbortRollout.Name: true,
}

// Starting a rollout takes the group's version, an action on it the
// rollout's rev; as for every versioned route: 428 without If-Match, 412
// when stale, * and lists taken.
func TestRolloutRoutesAreConditional(t *testing.T) {
	e := newRouteEnv(t) // rollout 1 aborted; group default at version 2
	const start = `{"set":{"/etc/prov/data/y":"1"}}`
	want(t, "start without If-Match", e.do(t, e.admin, "POST", "/v1/groups/default/rollouts", start), http.StatusPreconditionRequired, coreapi.CodeIfMatchRequired)
	want(t, "start stale", e.do(t, e.admin, "POST", "/v1/groups/default/rollouts", start, "If-Match", `"1"`), http.StatusPreconditionFailed, coreapi.CodeVersionConflict)
	if a := e.do(t, e.admin, "POST", "/v1/groups/default/rollouts", start, "If-Match", `"2"`); a.Code != http.StatusCreated || decodeAs[coreapi.Rollout](t, a).ID != 2 {
		t.Fatalf("start: %d %s", a.Code, a.Body)
	}
	want(t, "start while one is active", e.do(t, e.admin, "POST", "/v1/groups/default/rollouts", start, "If-Match", `"3"`), http.StatusConflict, coreapi.CodeRolloutActive)
	want(t, "a plain change while one is active", e.do(t, e.admin, "PATCH", "/v1/groups/default/data", start, "If-Match", `"3"`), http.StatusConflict, coreapi.CodeRolloutActive)
	rev := 1
	for _, action := range []string{"pause", "resume", "force", "pause", "abort"} {
		path := "/v1/rollouts/2/" + action
		want(t, action+" without If-Match", e.do(t, e.admin, "POST", path, `{}`), http.StatusPreconditionRequired, coreapi.CodeIfMatchRequired)
		want(t, action+" stale", e.do(t, e.admin, "POST", path, `{}`, "If-Match", fmt.Sprintf(`"%d"`, rev+7)), http.StatusPreconditionFailed, coreapi.CodeVersionConflict)
		im := "*"
		if rev%2 == 0 {
			im = fmt.Sprintf(`"999", "%d"`, rev)
		}
		a := e.do(t, e.admin, "POST", path, `{"reason":"because"}`, "If-Match", im)
		ro := decodeAs[coreapi.Rollout](t, a)
		if a.Code != http.StatusOK || ro.Rev != uint64(rev+1) || a.Header().Get("ETag") != coreapi.IfMatch(ro.Rev) || ro.Reason != "because" { //nolint:gosec // small
			t.Fatalf("%s: %d %+v", action, a.Code, ro)
		}
		rev++
	}
	want(t, "an action after the abort", e.do(t, e.admin, "POST", "/v1/rollouts/2/resume", `{}`, "If-Match", "*"), http.StatusConflict, coreapi.CodeRolloutOver)
	want(t, "a rollout that does not exist", e.do(t, e.admin, "GET", "/v1/rollouts/77", ""), http.StatusNotFound, coreapi.CodeNotFound)
	want(t, "a rollout that is not a number", e.do(t, e.admin, "GET", "/v1/rollouts/x1", ""), http.StatusNotFound, coreapi.CodeNotFound)
}
