package service_test

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/fleetprov/prov/internal/testenv/browser"
)

// The status page in a real browser, on the console's listener with only
// the deployment's root trusted (Chromium refuses the enrollment
// listener's identity certificate: consolecert_test.go): a board enrolled after the page loaded is
// counted and listed on reload, and the page loads nothing from elsewhere
// and logs no error (the tab fails the test otherwise).
func TestStatusPageInBrowser(t *testing.T) {
	began := time.Now()
	e := start(t, local)
	tab := browser.Open(t, e.core.RootCert())
	tab.Navigate(e.console + "/")
	if got := tab.Text("b.enrolled"); got != "0 enrolled" {
		t.Fatalf("before any enrollment the page says %q, want 0 enrolled", got)
	}
	if n := tab.Count("td.enrolled"); n != 0 {
		t.Fatalf("before any enrollment the page lists %d enrolled attempts", n)
	}
	if code, _, ae := e.enroll(t, req("rpi4", "1000000000005a7e", newDevice(t))); code != http.StatusOK {
		t.Fatalf("enroll: %d %+v", code, ae)
	}
	tab.Reload()
	if got := tab.Text("b.enrolled"); got != "1 enrolled" {
		t.Fatalf("after one enrollment the page says %q, want 1 enrolled", got)
	}
	if n := tab.Count("td.enrolled"); n != 1 {
		t.Fatalf("after one enrollment the page lists %d enrolled attempts, want 1", n)
	}
	row := tab.Text("tr:nth-child(2)") // the newest attempt, under the header
	for _, want := range []string{"enrolled", "rpi4", "127.0.0.1"} {
		if !strings.Contains(row, want) {
			t.Errorf("the newest row %q lacks %q", row, want)
		}
	}
	tab.Screenshot("status-one-enrolled")
	t.Logf("test took %s (proxy, core and step-ca included)", time.Since(began).Round(time.Millisecond))
}

// Hardware IDs and board names are the device's words: the page shows
// hostile ones as text. The tab also fails the test on a dialog, and the
// page's CSP would make an injected element log an error.
func TestStatusPageShowsHostileInputAsText(t *testing.T) {
	e := start(t, local)
	const hostileID = `<img src=x onerror=alert(1)>`
	const hostileBoard = `<script>alert(2)</script>`
	if code, _, _ := e.enroll(t, req("rpi4", hostileID, newDevice(t))); code != http.StatusBadRequest {
		t.Fatalf("a hostile hardware ID: %d, want 400", code)
	}
	if code, _, _ := e.enroll(t, req(hostileBoard, "1000000000005a7e", newDevice(t))); code != http.StatusBadRequest {
		t.Fatalf("a hostile board: %d, want 400", code)
	}
	tab := browser.Open(t, e.core.RootCert())
	tab.Navigate(e.console + "/")
	if n := tab.Count("td.refused"); n != 2 {
		t.Fatalf("the page lists %d refusals, want 2", n)
	}
	table := tab.Text("table")
	for _, want := range []string{hostileID, hostileBoard} {
		if !strings.Contains(table, want) {
			t.Errorf("the page does not show %q as text:\n%s", want, table)
		}
	}
	for _, sel := range []string{"img", "script", "td *"} {
		if n := tab.Count(sel); n != 0 {
			t.Errorf("the page has %d elements %q: device input became markup", n, sel)
		}
	}
	if d := tab.Dialogs(); len(d) != 0 {
		t.Errorf("the page opened dialogs: %q", d)
	}
	tab.Screenshot("status-hostile-refusals")
}
