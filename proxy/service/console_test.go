package service_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fleetprov/prov/pki"
	"github.com/fleetprov/prov/proxy/auditlog"
	"github.com/fleetprov/prov/proxy/status"
)

// The console's feed and state from a real proxy: each attempt reaches an
// open event stream as it is recorded, with what to do for a refusal; a
// hostile hardware ID travels as JSON text; the state's numbers are the
// factory record's, counted here from the file as `audit list` reads it.
func TestConsoleStateAndEvents(t *testing.T) {
	manifest := filepath.Join(t.TempDir(), "po-1.csv")
	if err := os.WriteFile(manifest, []byte("board,hardwareId\nrpi4,1000000000007a01\nrpi4,1000000000007a02\nrpi4,1000000000007a03\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	e := start(t, local+fmt.Sprintf("batches:\n  - {name: po-1, manifest: %q}\n", manifest))
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: pki.ClientTLSConfig(nil, e.roots, pki.ClientOptions{ServerRoles: []pki.Role{pki.RoleProxy}})}}
	streamCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	sreq, err := http.NewRequestWithContext(streamCtx, http.MethodGet, e.url+"/console/events", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := hc.Do(sreq)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("event stream: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	events := make(chan status.Attempt, 16)
	go func() {
		defer close(events)
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			if data, ok := strings.CutPrefix(sc.Text(), "data: "); ok {
				var a status.Attempt
				if json.Unmarshal([]byte(data), &a) == nil {
					events <- a
				}
			}
		}
	}()
	next := func(what string) status.Attempt {
		t.Helper()
		select {
		case a, ok := <-events:
			if !ok {
				t.Fatalf("%s: the stream ended", what)
			}
			return a
		case <-time.After(20 * time.Second):
			t.Fatalf("%s: no event", what)
		}
		return status.Attempt{}
	}
	if code, _, ae := e.enroll(t, req("rpi4", "1000000000007a01", newDevice(t))); code != 200 {
		t.Fatalf("%d %+v", code, ae)
	}
	if a := next("an enrollment"); a.Result != auditlog.Enrolled || a.HardwareID != "1000000000007a01" || a.Serial == "" || a.Batch != "po-1" || a.Do != "" {
		t.Fatalf("enrollment event %+v", a)
	}
	hostile := `<img src=x onerror=alert(1)>`
	if code, _, _ := e.enroll(t, req("rpi4", hostile, newDevice(t))); code != 400 {
		t.Fatalf("a hostile ID: %d", code)
	}
	if a := next("a hostile refusal"); a.Result != auditlog.Refused || a.Rule != auditlog.RuleBadRequest || !strings.Contains(a.HardwareID+a.Reason, "<img") || a.Do == "" {
		t.Fatalf("refusal event %+v", a)
	}
	if code, _, _ := e.enroll(t, req("rpi4", "100000000000ffff", newDevice(t))); code != 403 {
		t.Fatal("a board in no manifest was not refused")
	}
	if a := next("a manifest refusal"); a.Rule != "manifest" || !strings.Contains(a.Do, "Set the board aside") {
		t.Fatalf("manifest refusal event %+v", a)
	}

	sresp, err := hc.Get(e.url + "/console/state")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = sresp.Body.Close() }()
	var st status.State
	if err := json.NewDecoder(sresp.Body).Decode(&st); err != nil {
		t.Fatal(err)
	}
	counts := map[string]int{}
	var last auditlog.Record
	if err := auditlog.Read(e.record, func(r auditlog.Record) error { counts[r.Result]++; last = r; return nil }); err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(st.Counts) != fmt.Sprint(counts) || st.HeadSeq != last.Seq || st.HeadHash != last.Hash || len(st.Recent) != 3 || st.Recent[0].Rule != "manifest" {
		t.Fatalf("state %+v\nrecord counts %v, head %d %s", st, counts, last.Seq, last.Hash)
	}
	if len(st.Batches) != 1 || st.Batches[0].Name != "po-1" || st.Batches[0].Planned != 3 || st.Batches[0].Enrolled != 1 || st.Batches[0].Remaining != 2 ||
		st.Batches[0].FirstPassYield != 1 {
		t.Fatalf("batches %+v", st.Batches)
	}
}
