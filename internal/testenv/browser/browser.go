// Package browser drives a real headless Chromium for the tests of the
// pages the proxy serves: one browser process per test binary (started on
// first use, stopped by Main or After), a new tab per test, pages loaded
// over HTTPS that Chromium itself verifies with only the test's roots
// trusted, as a factory kiosk does (an NSS database under a HOME of the
// browser's own; no certificate error is ignored), and a tab that fails
// its test when the page logs an error, opens a dialog, fails a request or
// loads anything from outside the origin it was opened on ("no external
// assets").
//
// It skips a test where Debian's chromium or NSS's certutil (libnss3-tools)
// is absent (fails under PROV_REQUIRE_ALL=1; .ci/run installs both).
package browser

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
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
	// roots are the certificates its NSS database trusts, by SHA-256.
	roots map[[32]byte]*x509.Certificate
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

// start returns the shared browser trusting roots, starting it on first
// use. A root it does not trust yet restarts it with every root so far:
// Chromium reads its NSS database's trust at start (a test binary's tests
// mostly share one PKI, so this is rare).
func start(t testing.TB, roots []*x509.Certificate) *browser {
	t.Helper()
	chromium := testenv.Tool(t, "chromium", "install Debian's chromium (apt-get install -y chromium)")
	certutil := testenv.Tool(t, "certutil", "install NSS's tools (apt-get install -y libnss3-tools)")
	shared.mu.Lock()
	defer shared.mu.Unlock()
	if shared.err != nil {
		t.Fatalf("browser: %v", shared.err)
	}
	want := map[[32]byte]*x509.Certificate{}
	if shared.b != nil {
		want = shared.b.roots
	}
	fresh := false
	for _, r := range roots {
		k := sha256.Sum256(r.Raw)
		if _, ok := want[k]; !ok {
			want[k], fresh = r, true
		}
	}
	if shared.b != nil && fresh {
		t.Logf("browser: restarting it to trust another root (%s)", roots[0].Subject.CommonName)
		shared.b.stop()
		shared.b = nil
	}
	if shared.b == nil {
		shared.b, shared.err = launch(chromium, certutil, want)
		if shared.err != nil {
			t.Fatalf("browser: %v", shared.err)
		}
		t.Logf("browser: %s started in %s (one per test binary), trusting %d roots", shared.b.version, shared.b.started.Round(time.Millisecond), len(want))
	}
	return shared.b
}

// launch starts Chromium, with a temporary profile of its own (chromedp
// makes one when no user-data-dir is given) and a HOME of its own whose
// NSS database (~/.pki/nssdb, where Chromium on Linux looks) trusts roots
// for TLS servers and nothing else: what a factory kiosk is set up with
// (docs/factory.md). No certificate error is ignored: the proxy's
// identity certificate is refused (its URI SAN under the intermediate's
// URI name constraint, which Chromium does not implement), the console
// certificate (no URI SAN) loads.
func launch(chromium, certutil string, roots map[[32]byte]*x509.Certificate) (*browser, error) {
	home, err := os.MkdirTemp("", "prov-browser-home-")
	if err != nil {
		return nil, fmt.Errorf("browser HOME: %w", err)
	}
	if err := trust(certutil, home, roots); err != nil {
		_ = os.RemoveAll(home)
		return nil, err
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromium),
		chromedp.WindowSize(Width, Height),
		chromedp.Env("HOME="+home),
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
		_ = os.RemoveAll(home)
	}
	began := time.Now()
	// The first action starts the browser (and opens its first tab).
	version, err := chromedp.Run(ctx, chromedp.Evaluate[string]("navigator.userAgent"))
	if err != nil {
		stop()
		return nil, fmt.Errorf("start %s: %w", chromium, err)
	}
	return &browser{ctx: ctx, stop: stop, started: time.Since(began), version: version, roots: roots}, nil
}

// trust makes the NSS database of home and adds roots to it as trusted
// issuers of TLS servers ("C,,": not of email, not of code).
func trust(certutil, home string, roots map[[32]byte]*x509.Certificate) error {
	db := filepath.Join(home, ".pki", "nssdb")
	if err := os.MkdirAll(db, 0o700); err != nil {
		return fmt.Errorf("NSS database: %w", err)
	}
	run := func(args ...string) error {
		out, err := exec.Command(certutil, args...).CombinedOutput() //nolint:gosec // the test's own tool and files
		if err != nil {
			return fmt.Errorf("certutil %v: %w: %s", args, err, out)
		}
		return nil
	}
	if err := run("-N", "-d", "sql:"+db, "--empty-password"); err != nil {
		return err
	}
	for k, r := range roots {
		file := filepath.Join(home, fmt.Sprintf("root-%x.pem", k[:8]))
		if err := os.WriteFile(file, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: r.Raw}), 0o600); err != nil {
			return fmt.Errorf("NSS database: %w", err)
		}
		if err := run("-A", "-d", "sql:"+db, "-n", fmt.Sprintf("%s %x", r.Subject.CommonName, k[:8]), "-t", "C,,", "-i", file); err != nil {
			return err
		}
	}
	return nil
}
