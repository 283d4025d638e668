// Package browser drives a real headless Chromium for the tests of the
// pages the proxy serves: one browser process per test binary (started on
// first use, stopped by Main or After), a new tab per test, pages loaded
// over HTTPS whose served chain must verify against the roots the test
// names, and a tab that fails its test when the page logs an error, opens
// a dialog, fails a request or loads anything from outside the origin it
// was opened on ("no external assets").
//
// It skips a test where Debian's chromium is absent (fails under
// PROV_REQUIRE_ALL=1; .ci/run installs it).
package browser

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/fleetprov/prov/internal/testenv"
)

// The screen of the factory line's kiosk, the smallest the console is
// meant for.
const (
	Width  = 1366
	Height = 768
)

// The browser every test of the binary shares: starting Chromium costs
// seconds (1.6 to 4.6 s measured on CI's 2 cores) and a dozen processes,
// a tab costs milliseconds.
var shared struct {
	mu  sync.Mutex
	b   *browser
	err error // why it would not start: every later test fails the same way
}

type browser struct {
	ctx     context.Context // the browser's chromedp context; tabs derive from it
	stop    func()
	started time.Duration // how long the start took, logged once
	version string
}

// Main runs the tests and stops the shared browser, if one was started.
func Main(m *testing.M) int { return After(m.Run()) }

// After stops the shared browser and returns code: for a TestMain that runs
// the tests through another helper's Main, e.g.
// os.Exit(browser.After(pgtest.After(catest.Main(m)))).
func After(code int) int {
	shared.mu.Lock()
	defer shared.mu.Unlock()
	if shared.b != nil {
		// Waits for Chromium to exit; chromedp then removes the
		// temporary profile it made (retrying while Chromium's child
		// processes still write to it).
		shared.b.stop()
		shared.b = nil
	}
	return code
}

// start returns the shared browser, starting it on first use.
func start(t testing.TB) *browser {
	t.Helper()
	chromium := testenv.Tool(t, "chromium", "install Debian's chromium (apt-get install -y chromium)")
	shared.mu.Lock()
	defer shared.mu.Unlock()
	if shared.err != nil {
		t.Fatalf("browser: %v", shared.err)
	}
	if shared.b == nil {
		shared.b, shared.err = launch(chromium)
		if shared.err != nil {
			t.Fatalf("browser: %v", shared.err)
		}
		t.Logf("browser: %s started in %s (one per test binary)", shared.b.version, shared.b.started.Round(time.Millisecond))
	}
	return shared.b
}

// launch starts Chromium, with a temporary profile of its own (chromedp
// makes one when no user-data-dir is given).
func launch(chromium string) (*browser, error) {
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromium),
		chromedp.WindowSize(Width, Height),
		// Chromium rejects every certificate of this deployment with
		// ERR_CERT_INVALID, even with the root trusted in its NSS
		// database: the root's name constraints are critical and
		// constrain URI names (the SPIFFE IDs), a name type Chromium's
		// verifier does not implement, so by RFC 5280 it refuses any
		// leaf with a URI SAN (checked with Chromium 156 and a CA made
		// for the purpose: DNS-only constraints load, adding a URI one
		// gives ERR_CERT_INVALID). So the browser takes any certificate,
		// and each Tab.Navigate verifies the chain the browser was
		// served against the roots its test named, with Go's
		// verifier (which implements URI constraints) instead.
		chromedp.IgnoreCertErrors,
		// Chromium refuses to run as root with its sandbox on (the
		// sandbox's user namespaces are for dropping privileges root
		// does not drop), and the tests run as root in CI. The pages
		// under test are our own, served from the test's own proxy.
		chromedp.NoSandbox,
	)
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelBrowser := chromedp.NewContext(allocCtx)
	stop := func() {
		cancelBrowser()
		cancelAlloc()
	}
	began := time.Now()
	// The first action starts the browser (and opens its first tab).
	version, err := chromedp.Run(ctx, chromedp.Evaluate[string]("navigator.userAgent"))
	if err != nil {
		stop()
		return nil, fmt.Errorf("start %s: %w", chromium, err)
	}
	return &browser{ctx: ctx, stop: stop, started: time.Since(began), version: version}, nil
}
