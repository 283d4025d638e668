package browser

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/log"
	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"
)

// MaxWait bounds every wait of a tab for the page: long enough for a
// loaded CI machine, short enough that a page that never gets there fails
// the test rather than its binary's timeout.
const MaxWait = 30 * time.Second

// Tab is one test's tab in the shared browser. Its methods fail the test
// on an error of the browser; what the page did wrong (errors it logged,
// dialogs it opened, requests that failed or left its origin) fails the
// test when it ends, with every such problem listed.
type Tab struct {
	t      testing.TB
	ctx    context.Context
	origin string // scheme://host:port of the first Navigate; nothing else may load

	mu       sync.Mutex
	problems []string
	dialogs  []string
}

// Open opens a new tab for t in the shared browser, which trusts roots
// (PEM files) as a kiosk does: Chromium verifies each page's chain itself.
// The tab closes when the test ends.
func Open(t testing.TB, roots ...string) *Tab {
	t.Helper()
	var certs []*x509.Certificate
	for _, r := range roots {
		b, err := os.ReadFile(r)
		if err != nil {
			t.Fatalf("browser: root: %v", err)
		}
		for len(b) > 0 {
			var block *pem.Block
			if block, b = pem.Decode(b); block == nil {
				break
			}
			c, err := x509.ParseCertificate(block.Bytes)
			if err != nil {
				t.Fatalf("browser: root %s: %v", r, err)
			}
			certs = append(certs, c)
		}
	}
	if len(certs) == 0 {
		t.Fatalf("browser: roots %v hold no certificate", roots)
	}
	b := start(t, certs)
	ctx, cancel := chromedp.NewContext(b.ctx) // a new target: a tab
	tab := &Tab{t: t, ctx: ctx}
	if err := chromedp.Listen(ctx, tab.observe); err != nil {
		cancel()
		t.Fatalf("browser: new tab: %v", err)
	}
	t.Cleanup(func() {
		cancel()
		tab.mu.Lock()
		defer tab.mu.Unlock()
		for _, p := range tab.problems {
			t.Errorf("browser: %s", p)
		}
	})
	return tab
}

// observe runs in the tab's event loop: it only records (see
// chromedp.Listen), except for a dialog, which it answers from another
// goroutine so the page does not stay blocked on it.
func (tab *Tab) observe(ev any) {
	switch ev := ev.(type) {
	case *runtime.EventConsoleAPICalled:
		if ev.Type == runtime.ConsoleAPICalledTypeError || ev.Type == runtime.ConsoleAPICalledTypeAssert {
			var args []string
			for _, a := range ev.Args {
				args = append(args, remoteString(a))
			}
			tab.problem("the page logged an error: %s", strings.Join(args, " "))
		}
	case *runtime.EventExceptionThrown:
		d := ev.ExceptionDetails
		msg := d.Text
		if d.Exception != nil {
			msg += " " + remoteString(d.Exception)
		}
		tab.problem("uncaught exception at %s:%d: %s", d.URL, d.LineNumber, msg)
	case *log.EventEntryAdded:
		// The browser's own log: CSP violations, failed loads, mixed content.
		if ev.Entry.Level == log.EntryLevelError {
			tab.problem("the browser logged an error (%s) for %s: %s", ev.Entry.Source, ev.Entry.URL, ev.Entry.Text)
		}
	case *network.EventRequestWillBeSent:
		tab.checkOrigin(ev.Request.URL)
	case *network.EventResponseReceived:
		if ev.Response.Status >= 400 {
			tab.problem("%s answered %d", ev.Response.URL, ev.Response.Status)
		}
	case *network.EventLoadingFailed:
		if !ev.Canceled {
			tab.problem("a request failed (%s): %s", ev.Type, ev.ErrorText)
		}
	case *page.EventJavascriptDialogOpening:
		tab.mu.Lock()
		tab.dialogs = append(tab.dialogs, string(ev.Type)+": "+ev.Message)
		tab.mu.Unlock()
		tab.problem("the page opened a %s dialog: %q", ev.Type, ev.Message)
		go func() {
			_, _ = chromedp.Call(tab.ctx, page.HandleJavaScriptDialog, page.HandleJavaScriptDialogParams{Accept: false})
		}()
	}
}

func remoteString(o *runtime.RemoteObject) string {
	switch {
	case o == nil:
		return ""
	case o.Description != "":
		return o.Description
	case len(o.Value) > 0:
		var s string
		if json.Unmarshal(o.Value, &s) == nil {
			return s // a string, unquoted
		}
		return string(o.Value)
	}
	return string(o.Type)
}

// checkOrigin records a request to anywhere but the tab's origin: the
// console must work on a factory network with no internet, so it may load
// nothing from elsewhere. data: URLs are the page's own bytes.
func (tab *Tab) checkOrigin(raw string) {
	u, err := url.Parse(raw)
	if err != nil {
		tab.problem("the page requested an unparsable URL %q", raw)
		return
	}
	if u.Scheme == "data" || u.Scheme == "about" {
		return
	}
	tab.mu.Lock()
	origin := tab.origin
	tab.mu.Unlock()
	if origin != "" && u.Scheme+"://"+u.Host != origin {
		tab.problem("the page loaded %s, outside %s (no external assets)", raw, origin)
	}
}

func (tab *Tab) problem(format string, args ...any) {
	tab.mu.Lock()
	defer tab.mu.Unlock()
	tab.problems = append(tab.problems, fmt.Sprintf(format, args...))
}

// Dialogs returns the dialogs the page opened so far (each also fails the
// test): for a test that wants to say which.
func (tab *Tab) Dialogs() []string {
	tab.mu.Lock()
	defer tab.mu.Unlock()
	return append([]string(nil), tab.dialogs...)
}

// do runs an action and fails the test on its error.
func do[T any](tab *Tab, what string, a chromedp.Action[T]) T {
	tab.t.Helper()
	ctx, cancel := context.WithTimeout(tab.ctx, MaxWait)
	defer cancel()
	v, err := chromedp.Run(ctx, a)
	if err != nil {
		tab.t.Fatalf("browser: %s: %v", what, err)
	}
	return v
}

// Navigate loads rawURL and waits for its load event. The first URL's
// origin is the only one the tab may load from. Only HTTPS: the browser
// verifies the chain with the test's roots trusted.
func (tab *Tab) Navigate(rawURL string) {
	tab.t.Helper()
	u, err := url.Parse(rawURL)
	if err != nil {
		tab.t.Fatalf("browser: navigate: %v", err)
	}
	if u.Scheme != "https" {
		tab.t.Fatalf("browser: %s is not served over HTTPS", u)
	}
	tab.mu.Lock()
	if tab.origin == "" {
		tab.origin = u.Scheme + "://" + u.Host
	}
	tab.mu.Unlock()
	resp := do(tab, "navigate to "+rawURL, chromedp.NavigateResponse(rawURL))
	if resp == nil {
		tab.t.Fatalf("browser: navigate to %s: no response", rawURL)
	}
}

// Refused loads rawURL expecting the browser to refuse it (a certificate
// it does not accept, say), and returns the browser's error text, such
// as net::ERR_CERT_INVALID; a page that loads fails the test. The failed
// load is not one of the tab's problems: it is what was asked for.
func (tab *Tab) Refused(rawURL string) string {
	tab.t.Helper()
	tab.mu.Lock()
	before := len(tab.problems)
	tab.mu.Unlock()
	ctx, cancel := context.WithTimeout(tab.ctx, MaxWait)
	defer cancel()
	resp, err := chromedp.Run(ctx, chromedp.NavigateResponse(rawURL))
	if err == nil {
		tab.t.Fatalf("browser: %s loaded (status %d); want it refused", rawURL, resp.Status)
	}
	if ctx.Err() != nil {
		tab.t.Fatalf("browser: navigate to %s: %v", rawURL, err)
	}
	tab.mu.Lock()
	tab.problems = tab.problems[:before]
	tab.mu.Unlock()
	return err.Error()
}

// Reload reloads the page and waits for its load event.
func (tab *Tab) Reload() {
	tab.t.Helper()
	do(tab, "reload", chromedp.Reload())
}

// Text returns the visible text of the first element matching the CSS
// selector, waiting for one to be there.
func (tab *Tab) Text(selector string) string {
	tab.t.Helper()
	return do(tab, "text of "+selector, chromedp.Text(chromedp.CSS(selector)))
}

// Attr returns the attribute name of the first element matching the CSS
// selector, and whether it has one.
func (tab *Tab) Attr(selector, name string) (string, bool) {
	tab.t.Helper()
	r := do(tab, "attribute "+name+" of "+selector, chromedp.AttributeValue(chromedp.CSS(selector), name))
	return r.Value, r.Exists
}

// Count returns how many elements match the CSS selector now (zero
// included: it does not wait for one).
func (tab *Tab) Count(selector string) int {
	tab.t.Helper()
	return do(tab, "count "+selector, chromedp.Evaluate[int](fmt.Sprintf("document.querySelectorAll(%q).length", selector)))
}

// Eval evaluates a JavaScript expression in the page and returns its value.
func (tab *Tab) Eval(expr string) any {
	tab.t.Helper()
	return do(tab, "evaluate "+expr, chromedp.Evaluate[any](expr))
}

// WaitUntil waits until the JavaScript expression is truthy in the page,
// tested by the page itself on every animation frame (no sleeping, no
// round trip per try), for at most MaxWait.
func (tab *Tab) WaitUntil(expr string) {
	tab.t.Helper()
	do(tab, "wait until "+expr, chromedp.Poll[chromedp.Void](expr, chromedp.WithPollingTimeout(MaxWait)))
}

// Screenshot writes a PNG of the whole page to the test's artifact
// directory (t.ArtifactDir: a temporary one, or kept under DIR with go test
// -artifacts -outputdir DIR) and logs and returns its path.
func (tab *Tab) Screenshot(name string) string {
	tab.t.Helper()
	png := do(tab, "screenshot", chromedp.FullScreenshot(100))
	path := filepath.Join(tab.t.ArtifactDir(), name+".png")
	if err := os.WriteFile(path, png, 0o600); err != nil {
		tab.t.Fatalf("browser: screenshot: %v", err)
	}
	tab.t.Logf("browser: screenshot %s", path)
	return path
}

// Viewport resizes the page's viewport to width x height CSS pixels (a
// phone's, say); the tab starts at the kiosk's Width x Height.
func (tab *Tab) Viewport(width, height int64) {
	tab.t.Helper()
	do(tab, "viewport", chromedp.EmulateViewport(width, height))
}
