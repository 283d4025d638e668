package service_test

import (
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/fleetprov/prov/core/contract/coreapi"
	"github.com/fleetprov/prov/core/coretest"
	"github.com/fleetprov/prov/core/store/postgres"
	"github.com/fleetprov/prov/internal/testenv/pgtest"
	"github.com/fleetprov/prov/pki"
	"github.com/fleetprov/prov/pki/ca/catest"
	"github.com/fleetprov/prov/proxy/contract/enrollapi"
	"github.com/fleetprov/prov/proxy/proxytest"
)

// Two real proxies on one line, one real core (on bbolt, then on
// PostgreSQL) with the real step-ca, one batch manifest in both proxies'
// configuration:
//   - more boards than the quota, enrolled at once through both proxies:
//     exactly the quota is enrolled, every other board refused by rule
//     quota (before, each proxy counted alone: up to twice the quota);
//   - one board sent to both proxies at once with two keys: one identity,
//     the other key refused (before, both could be certified);
//   - a proxy restarted with an empty factory record still finds the batch
//     used (the counts are core's).
func TestProxiesShareABatch(t *testing.T) {
	for _, engine := range []string{"bbolt", "postgres"} {
		t.Run(engine, func(t *testing.T) {
			c := catest.Shared(t)
			dir := t.TempDir()
			storeYAML := ""
			if engine == "postgres" {
				url := pgtest.New(t, fmt.Sprintf("registry-v%d", postgres.SchemaVersion()), postgres.Migrate)
				storeYAML = fmt.Sprintf("store: {engine: postgres, url: %q, singleCore: true}\n", url)
			}
			core := coretest.Run(t, c, coretest.Config(t, c.Deployment, dir, storeYAML), dir)
			roots, err := pki.LoadTrustBundle(core.RootCert())
			if err != nil {
				t.Fatal(err)
			}

			const boards, quota = 8, 3
			var lines strings.Builder
			lines.WriteString("board,hardwareId\n")
			for i := range boards {
				fmt.Fprintf(&lines, "rpi4,10000000000005%02x\n", i)
			}
			manifest := filepath.Join(dir, "line.csv")
			if err := os.WriteFile(manifest, []byte(lines.String()), 0o600); err != nil {
				t.Fatal(err)
			}
			twoKeys := filepath.Join(dir, "twokeys.csv")
			if err := os.WriteFile(twoKeys, []byte("rpi4,10000000000007aa\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			vouching := local + fmt.Sprintf("rate: 1000\nburst: 1000\nbatches:\n  - {name: line-7, manifest: %q, quota: %d}\n  - {name: two-keys, manifest: %q}\n",
				manifest, quota, twoKeys)
			proxies := []*env{}
			for range 2 {
				p := proxytest.Start(t, core, vouching)
				proxies = append(proxies, &env{core: core, url: p.URL, record: p.Record, roots: roots})
			}

			// Every board at once, alternately through each proxy.
			type result struct {
				code int
				rule string
			}
			results := make([]result, boards)
			var wg sync.WaitGroup
			for i := range boards {
				wg.Go(func() {
					code, _, ae := proxies[i%2].enroll(t, req("rpi4", fmt.Sprintf("10000000000005%02x", i), newDevice(t)))
					results[i] = result{code: code}
					if ae != nil {
						results[i].rule = string(ae.Code)
					}
				})
			}
			wg.Wait()
			enrolled := 0
			for i, r := range results {
				switch {
				case r.code == http.StatusOK:
					enrolled++
				case r.code != http.StatusForbidden || r.rule != string(enrollapi.RuleQuota.Code()):
					t.Errorf("board %d: %d %s, want 200 or 403 %s", i, r.code, r.rule, enrollapi.RuleQuota.Code())
				}
			}
			if enrolled != quota {
				t.Fatalf("%d of %d boards enrolled through two proxies from a batch of quota %d", enrolled, boards, quota)
			}

			// One board, two keys, both proxies at once.
			codes := make([]int, 2)
			rules := make([]string, 2)
			serials := make([]string, 2)
			for i := range 2 {
				wg.Go(func() {
					code, r, ae := proxies[i].enroll(t, req("rpi4", "10000000000007aa", newDevice(t)))
					codes[i] = code
					if r != nil {
						serials[i] = r.Serial
					}
					if ae != nil {
						rules[i] = string(ae.Code)
					}
				})
			}
			wg.Wait()
			ok := 0
			for i := range 2 {
				switch {
				case codes[i] == http.StatusOK:
					ok++
				case codes[i] != http.StatusForbidden || rules[i] != string(enrollapi.RuleReenrollment.Code()):
					t.Errorf("proxy %d: %d %s, want 200 or 403 %s", i, codes[i], rules[i], enrollapi.RuleReenrollment.Code())
				}
			}
			if ok != 1 {
				t.Fatalf("one board with two keys: %d enrolled (%v %v), want 1", ok, codes, rules)
			}
			serial := serials[0] + serials[1]
			d, err := core.Client(t, core.Admin(t)).Device(ctx, serial)
			if err != nil || len(d.Issued) != 1 {
				t.Fatalf("the board of two keys at core: %+v %v, want one certificate", d, err)
			}

			// A proxy that starts afresh (no factory record) finds the
			// batch used: the counts are core's.
			p := proxytest.Start(t, core, vouching)
			fresh := &env{core: core, url: p.URL, record: p.Record, roots: roots}
			for i := range boards {
				if results[i].code == http.StatusOK {
					continue
				}
				code, _, ae := fresh.enroll(t, req("rpi4", fmt.Sprintf("10000000000005%02x", i), newDevice(t)))
				if code != http.StatusForbidden || ae.Code != enrollapi.RuleQuota.Code() {
					t.Fatalf("a new proxy, board %d: %d %+v, want refused_quota", i, code, ae)
				}
				break
			}
		})
	}
}

// A bad request to the admission API is refused with 400 naming the field
// and what is wrong with it; a device or an admin may not call it.
func TestAdmissionAPIRefusesBadRequests(t *testing.T) {
	core := coretest.Start(t, "")
	proxy := core.Client(t, core.ServiceCert(t, pki.RoleProxy, catest.Proxy))
	good := coreapi.AdmissionRequest{Board: "rpi4", HardwareID: "10000000000008a1", KeySHA256: strings.Repeat("ab", 32),
		Batch: "b1", Quota: 2, Policy: coreapi.ReenrollDeny, RetryWindowSeconds: 900, LeaseSeconds: 60}
	for _, tc := range []struct {
		name   string
		change func(*coreapi.AdmissionRequest)
		want   string
	}{
		{"bad board", func(r *coreapi.AdmissionRequest) { r.Board = "rpi9" }, "board"},
		{"bad hardware ID", func(r *coreapi.AdmissionRequest) { r.HardwareID = "xyz" }, "hardwareId"},
		{"short key digest", func(r *coreapi.AdmissionRequest) { r.KeySHA256 = "abcd" }, "keySha256"},
		{"upper-case key digest", func(r *coreapi.AdmissionRequest) { r.KeySHA256 = strings.Repeat("AB", 32) }, "keySha256"},
		{"no quota", func(r *coreapi.AdmissionRequest) { r.Quota = 0 }, "quota"},
		{"a quota without a batch", func(r *coreapi.AdmissionRequest) { r.Batch = "" }, "quota"},
		{"control character in batch", func(r *coreapi.AdmissionRequest) { r.Batch = "b\x01" }, "batch"},
		{"unknown policy", func(r *coreapi.AdmissionRequest) { r.Policy = "sometimes" }, "policy"},
		{"negative retry window", func(r *coreapi.AdmissionRequest) { r.RetryWindowSeconds = -1 }, "retryWindowSeconds"},
		{"no lease", func(r *coreapi.AdmissionRequest) { r.LeaseSeconds = 0 }, "leaseSeconds"},
		{"lease too long", func(r *coreapi.AdmissionRequest) { r.LeaseSeconds = coreapi.MaxLeaseSeconds + 1 }, "leaseSeconds"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := good
			tc.change(&r)
			_, err := proxy.Admit(ctx, r)
			var se *coreapi.StatusError
			if !errors.As(err, &se) || se.Status != http.StatusBadRequest || se.Body.Code != coreapi.CodeBadRequest ||
				!strings.HasPrefix(se.Body.Message, tc.want+":") {
				t.Fatalf("got %v, want 400 bad_request naming %s", err, tc.want)
			}
		})
	}
	a, err := proxy.Admit(ctx, good)
	if err != nil {
		t.Fatalf("the good request: %v", err)
	}
	err = proxy.EndAdmission(ctx, a.Serial, coreapi.AdmissionEnd{KeySHA256: good.KeySHA256, Batch: "b1", Outcome: "done"})
	var se *coreapi.StatusError
	if !errors.As(err, &se) || se.Status != http.StatusBadRequest || !strings.HasPrefix(se.Body.Message, "outcome:") {
		t.Fatalf("an unknown outcome: %v, want 400 naming outcome", err)
	}
	if err := proxy.EndAdmission(ctx, a.Serial, coreapi.AdmissionEnd{KeySHA256: good.KeySHA256, Batch: "b1", Outcome: coreapi.OutcomeReleased}); err != nil {
		t.Fatalf("released: %v", err)
	}
	if _, err := core.Client(t, core.Admin(t)).Admit(ctx, good); !errors.As(err, &se) || se.Status != http.StatusForbidden {
		t.Fatalf("an admin admitting: %v, want 403", err)
	}
}
