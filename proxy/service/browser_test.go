package service_test

import (
	"archive/zip"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fleetprov/prov/core/coretest"
	"github.com/fleetprov/prov/internal/testenv/browser"
	"github.com/fleetprov/prov/pki"
	"github.com/fleetprov/prov/proxy/auditlog"
	"github.com/fleetprov/prov/proxy/batchreport"
	"github.com/fleetprov/prov/proxy/cli"
	"github.com/fleetprov/prov/proxy/proxytest"
)

// consoleEnv is a core and a proxy with a batch of four boards and the
// loopback named as a station, its health checked every second.
func consoleEnv(t *testing.T) *env {
	t.Helper()
	manifest := filepath.Join(t.TempDir(), "po-7.csv")
	if err := os.WriteFile(manifest, []byte("board,hardwareId\nrpi4,1000000000007b01\nrpi4,1000000000007b02\nrpi4,1000000000007b03\nrpi4,1000000000007b04\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	core := coretest.Start(t, "")
	p := proxytest.StartWith(t, core, proxytest.ConsoleSection(core, "checkEvery: 1s, stations: [{network: 127.0.0.0/8, name: line 1 station A}]"),
		local+fmt.Sprintf("batches:\n  - {name: po-7, manifest: %q}\n", manifest))
	roots, err := pki.LoadTrustBundle(core.RootCert())
	if err != nil {
		t.Fatal(err)
	}
	return &env{core: core, proxy: p, url: p.URL, console: p.ConsoleURL, record: p.Record, roots: roots}
}

// listCounts is what `prov-proxy audit list` prints for today, counted by
// result: what the console's counts must equal.
func listCounts(t *testing.T, record string) map[string]int {
	t.Helper()
	var out, errOut bytes.Buffer
	if code := cli.Main(ctx, []string{"audit", "list", "--json", "--log", record}, &out, &errOut); code != 0 {
		t.Fatalf("audit list: exit %d: %s", code, errOut.String())
	}
	today := time.Now().Format(time.DateOnly)
	counts := map[string]int{}
	dec := json.NewDecoder(&out)
	for dec.More() {
		var r auditlog.Record
		if err := dec.Decode(&r); err != nil {
			t.Fatal(err)
		}
		if r.Time.Local().Format(time.DateOnly) == today {
			counts[r.Result]++
		}
	}
	return counts
}

// pageCounts are the console's counts of today.
func pageCounts(tab *browser.Tab) map[string]int {
	counts := map[string]int{}
	for _, r := range []string{auditlog.Enrolled, auditlog.Refused, auditlog.Failed} {
		var n int
		if _, err := fmt.Sscan(tab.Text("#n-"+r), &n); err != nil {
			return nil
		}
		if n > 0 {
			counts[r] = n
		}
	}
	return counts
}

// The factory console in a real browser, as the person at the station and
// the shift lead use it: boards enrolled after the page loaded appear
// without a reload, green, at their station; a refusal shows what happened
// and what to do; the counts equal `prov-proxy audit list`; the batch
// panel counts the batch; the health panel sees core and step-ca; the page
// survives a restart of the proxy (it reconnects and catches up); it fits
// a phone. The tab fails the test on any console error, dialog, failed or
// external request.
func TestConsoleInBrowser(t *testing.T) {
	e := consoleEnv(t)
	tab := browser.Open(t, e.core.RootCert())
	tab.Navigate(e.console + "/")
	tab.WaitUntil(`document.body.dataset.loaded === "true" && document.getElementById("conn").dataset.state === "live"`)
	if got := tab.Text("#n-enrolled"); got != "0" {
		t.Fatalf("before any attempt the page counts %q enrolled", got)
	}
	tab.WaitUntil(`document.querySelectorAll("#health-list li.ok").length >= 4`) // core, step-ca, certificate, provisioner, clock, record
	health := tab.Text("#health-list")
	for _, want := range []string{"core answers", "step-ca answers", "provisioner", "chain verified", "clock"} {
		if !strings.Contains(health, want) {
			t.Errorf("the health panel lacks %q:\n%s", want, health)
		}
	}
	if n := tab.Count("#health-list li.bad"); n != 0 {
		t.Errorf("the health panel shows %d problems:\n%s", n, health)
	}
	if got := tab.Text(`.batch[data-batch="po-7"] .planned`); got != "4" {
		t.Errorf("batch po-7 planned %q, want 4", got)
	}

	// Live: an enrollment appears without a reload, at its station.
	if code, _, ae := e.enroll(t, req("rpi4", "1000000000007b01", newDevice(t))); code != http.StatusOK {
		t.Fatalf("enroll: %d %+v", code, ae)
	}
	tab.WaitUntil(`document.querySelectorAll("#attempts li.enrolled").length === 1`)
	row := tab.Text("#attempts li.enrolled")
	for _, want := range []string{"enrolled", "rpi4", "1000000000007b01", "line 1 station A", "batch po-7", "sign"} {
		if !strings.Contains(strings.ToLower(row), strings.ToLower(want)) {
			t.Errorf("the enrolled row %q lacks %q", row, want)
		}
	}
	tab.WaitUntil(`document.getElementById("n-enrolled").textContent === "1"`)
	tab.WaitUntil(`document.querySelector('.batch[data-batch="po-7"] .remaining').textContent === "3"`)

	// A refusal, with its action, on the station's card too.
	if code, _, _ := e.enroll(t, req("rpi4", "100000000000ffff", newDevice(t))); code != http.StatusForbidden {
		t.Fatalf("a board in no manifest: %d, want 403", code)
	}
	tab.WaitUntil(`document.querySelectorAll("#attempts li.refused").length === 1`)
	refused := tab.Text("#attempts li.refused")
	for _, want := range []string{"This board is in no batch manifest.", "What to do: Set the board aside for the shift lead"} {
		if !strings.Contains(refused, want) {
			t.Errorf("the refused row %q lacks %q", refused, want)
		}
	}
	if card := tab.Text("#stations .station-card"); !strings.Contains(card, "REFUSED") || !strings.Contains(card, "line 1 station A") {
		t.Errorf("the station's card %q does not show its last attempt refused", card)
	}
	tab.Screenshot("console-enrolled-and-refused")

	// The counts are the record's, as audit list gives them.
	tab.WaitUntil(`document.getElementById("n-refused").textContent === "1"`)
	if page, list := pageCounts(tab), listCounts(t, e.record); fmt.Sprint(page) != fmt.Sprint(list) {
		t.Errorf("the console counts %v, audit list %v", page, list)
	}

	// The proxy restarts: the page says so, reconnects by itself and
	// shows what happened meanwhile.
	if err := e.proxy.Stop(); err != nil {
		t.Fatal(err)
	}
	tab.WaitUntil(`document.getElementById("conn").dataset.state === "reconnecting"`)
	tab.Screenshot("console-reconnecting")
	e.proxy.Restart(t)
	tab.WaitUntil(`document.getElementById("conn").dataset.state === "live"`)
	if code, _, ae := e.enroll(t, req("rpi4", "1000000000007b02", newDevice(t))); code != http.StatusOK {
		t.Fatalf("enroll after the restart: %d %+v", code, ae)
	}
	tab.WaitUntil(`document.querySelectorAll("#attempts li.enrolled").length === 2`)
	tab.WaitUntil(`document.getElementById("n-enrolled").textContent === "2"`)
	if page, list := pageCounts(tab), listCounts(t, e.record); fmt.Sprint(page) != fmt.Sprint(list) {
		t.Errorf("after the restart the console counts %v, audit list %v", page, list)
	}
	tab.WaitUntil(`document.querySelector('.batch[data-batch="po-7"] .enrolled').textContent === "2"`)
	tab.Screenshot("console-kiosk")

	// The kiosk's screen and a phone's: nothing wider than the screen.
	if wide := tab.Eval(`document.documentElement.scrollWidth > window.innerWidth`); wide != false {
		t.Errorf("the page is wider than the %d px kiosk screen", browser.Width)
	}
	tab.Viewport(390, 844)
	if wide := tab.Eval(`document.documentElement.scrollWidth > window.innerWidth`); wide != false {
		t.Error("the page is wider than a 390 px phone screen")
	}
	tab.Screenshot("console-phone")
}

// Hardware IDs, boards and reasons are the device's words: the console
// shows hostile ones as text, live and after a reload. The page's policy
// allows no inline script, so an injected element would also log an
// error, and a dialog fails the tab.
func TestConsoleShowsHostileInputAsText(t *testing.T) {
	e := start(t, local)
	tab := browser.Open(t, e.core.RootCert())
	tab.Navigate(e.console + "/")
	tab.WaitUntil(`document.getElementById("conn").dataset.state === "live"`)
	const hostileID = `<img src=x onerror=alert(1)>`
	const hostileBoard = `<script>alert(2)</script>`
	if code, _, _ := e.enroll(t, req("rpi4", hostileID, newDevice(t))); code != http.StatusBadRequest {
		t.Fatalf("a hostile hardware ID: %d, want 400", code)
	}
	if code, _, _ := e.enroll(t, req(hostileBoard, "1000000000005a7e", newDevice(t))); code != http.StatusBadRequest {
		t.Fatalf("a hostile board: %d, want 400", code)
	}
	check := func(when string) {
		t.Helper()
		tab.WaitUntil(`document.querySelectorAll("#attempts li.refused").length === 2`)
		list := tab.Text("#attempts")
		for _, want := range []string{hostileID, hostileBoard} {
			if !strings.Contains(list, want) {
				t.Errorf("%s: the console does not show %q as text:\n%s", when, want, list)
			}
		}
		for _, sel := range []string{"#attempts img", "#attempts script", "#stations img", "#stations script", "img"} {
			if n := tab.Count(sel); n != 0 {
				t.Errorf("%s: the page has %d elements %q: device input became markup", when, n, sel)
			}
		}
		if d := tab.Dialogs(); len(d) != 0 {
			t.Errorf("%s: the page opened dialogs: %q", when, d)
		}
	}
	check("live")
	tab.Reload()
	check("after a reload")
	tab.Screenshot("console-hostile-refusals")
}

// The batch's signed report from the console's link: a zip of the report,
// its signature and the proxy's chain, which verifies under the root and
// lists the batch's boards.
func TestConsoleReportExport(t *testing.T) {
	e := consoleEnv(t)
	for _, hw := range []string{"1000000000007b01", "1000000000007b03"} {
		if code, _, ae := e.enroll(t, req("rpi4", hw, newDevice(t))); code != http.StatusOK {
			t.Fatalf("enroll %s: %d %+v", hw, code, ae)
		}
	}
	tab := browser.Open(t, e.core.RootCert())
	tab.Navigate(e.console + "/")
	href, ok := tab.Attr(`.batch[data-batch="po-7"] a.csv`, "href")
	if !ok || !strings.HasPrefix(href, "/console/report?batch=po-7&format=csv") {
		t.Fatalf("the batch's CSV link is %q", href)
	}
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: pki.ClientTLSConfig(nil, e.roots, pki.ClientOptions{ServerRoles: []pki.Role{pki.RoleProxy}})}}
	resp, err := hc.Get(e.url + href)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "application/zip" ||
		!strings.Contains(resp.Header.Get("Content-Disposition"), "report-po-7-") {
		t.Fatalf("report: %d %q %q %v", resp.StatusCode, resp.Header.Get("Content-Type"), resp.Header.Get("Content-Disposition"), err)
	}
	zr, err := zip.NewReader(bytes.NewReader(body), int64(len(body)))
	if err != nil {
		t.Fatal(err)
	}
	files := map[string][]byte{}
	for _, f := range zr.File {
		rc, err := f.Open()
		if err != nil {
			t.Fatal(err)
		}
		data, err := io.ReadAll(rc)
		_ = rc.Close()
		if err != nil {
			t.Fatal(err)
		}
		files[filepath.Ext(f.Name)] = data
	}
	v, err := batchreport.Verify(files[".csv"], files[".sig"], files[".pem"], e.roots)
	if err != nil {
		t.Fatalf("the console's report does not verify: %v", err)
	}
	if v.Report.Batch != "po-7" || v.Report.ManifestSize != 4 || !bytes.Contains(files[".csv"], []byte("1000000000007b01")) ||
		!bytes.Contains(files[".csv"], []byte("1000000000007b03")) || bytes.Contains(files[".csv"], []byte("1000000000007b02")) {
		t.Errorf("report %+v:\n%s", v.Report, files[".csv"])
	}
	for _, bad := range []string{"?batch=po-7&format=xml", "?batch=nope&format=csv", "?format=csv"} {
		r, err := hc.Get(e.url + "/console/report" + bad)
		if err != nil {
			t.Fatal(err)
		}
		_ = r.Body.Close()
		if r.StatusCode != http.StatusBadRequest && r.StatusCode != http.StatusNotFound {
			t.Errorf("report%s: %d, want 400 or 404", bad, r.StatusCode)
		}
	}
}
