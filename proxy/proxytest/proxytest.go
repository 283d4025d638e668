// Package proxytest runs a real prov-proxy in the test process, in front of
// a test core (core/coretest) and its step-ca, for the proxy's own tests
// and the device client's.
package proxytest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/fleetprov/prov/core/coretest"
	"github.com/fleetprov/prov/pki"
	"github.com/fleetprov/prov/pki/ca/catest"
	"github.com/fleetprov/prov/proxy/config"
	"github.com/fleetprov/prov/proxy/service"
)

// Proxy is a running proxy.
type Proxy struct {
	URL    string // https://localhost:port
	Record string // the factory record's path
	Config string // the configuration file it runs with
	// ConsoleURL is the console's own listener (console.listen, with the
	// PKI's console certificate): https://localhost:port, what a
	// kiosk's browser opens.
	ConsoleURL string

	addr        string // the factory side's address, for Restart
	consoleAddr string // the console's, if it has its own
	opts        []service.Option
	stop        func() error // stops it and waits; nil when stopped
}

// Start runs a proxy for core until the test ends; vouching is the YAML
// of the configuration's vouching section.
func Start(t testing.TB, core *coretest.Core, vouching string, opts ...service.Option) *Proxy {
	t.Helper()
	return StartWith(t, core, "", vouching, opts...)
}

// StartWith also merges top-level YAML into the configuration (for
// example "certificateLifetime: 5m", or a "field:" section that replaces
// the default one).
func StartWith(t testing.TB, core *coretest.Core, top, vouching string, opts ...service.Option) *Proxy {
	t.Helper()
	return StartOn(t, core, "127.0.0.1:0", top, vouching, opts...)
}

// StartOn is StartWith with the factory side listening on addr; the URL
// names its host.
func StartOn(t testing.TB, core *coretest.Core, addr, top, vouching string, opts ...service.Option) *Proxy {
	t.Helper()
	p, err := Try(t, core, addr, top, vouching, opts...)
	if err != nil {
		t.Fatalf("proxy did not start: %v", err)
	}
	return p
}

// Try is StartOn that returns the error of a proxy that refused to start
// (which is then not running) instead of failing the test. top may replace
// core: and ca: to put other servers in their place.
func Try(t testing.TB, core *coretest.Core, addr, top, vouching string, opts ...service.Option) (*Proxy, error) {
	t.Helper()
	c := core.CA
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "proxy.yaml")
	record := filepath.Join(dir, "factory.jsonl")
	mqtt := "tls://localhost:8883"
	if core.MQTTAddr != "" {
		_, port, _ := net.SplitHostPort(core.MQTTAddr)
		mqtt = "tls://localhost:" + port
	}
	p := catest.Proxy
	cfg := fmt.Sprintf(`listen: "127.0.0.1:0"
trustBundle: %q
tls: {cert: %q, key: %q}
provisioner: {key: %q, passwordFile: %q}
core: {url: %q}
ca: {url: %q}
field: {mqttUrl: %q}
record: {path: %q}
%s
log: {level: debug}
vouching:
%s`, c.RootCert(), c.IdentityCert(pki.RoleProxy, p), c.IdentityKey(pki.RoleProxy, p), c.ProxyProvisionerKey(p), c.ProxyProvisionerPassword(p),
		strings.Replace(core.URL, "127.0.0.1", "localhost", 1), c.CAURL, mqtt, record, ConsoleSection(core, ""), indent(vouching))
	if err := os.WriteFile(cfgPath, []byte(coretest.MergeYAML(cfg, top+"\n")), 0o600); err != nil {
		t.Fatal(err)
	}
	px := &Proxy{Record: record, Config: cfgPath, opts: opts}
	if err := px.run(t, addr, ""); err != nil {
		return nil, err
	}
	t.Cleanup(func() {
		if err := px.Stop(); err != nil {
			t.Errorf("proxy stopped with: %v", err)
		}
	})
	host, port, _ := net.SplitHostPort(px.addr)
	if host == "127.0.0.1" {
		host = "localhost"
	}
	px.URL = "https://" + net.JoinHostPort(host, port)
	if px.consoleAddr != "" {
		_, cport, _ := net.SplitHostPort(px.consoleAddr)
		px.ConsoleURL = "https://" + net.JoinHostPort("localhost", cport)
	}
	return px, nil
}

// run starts the proxy with its configuration on addr (and its console on
// consoleAddr, or the configuration's console.listen) and waits until it
// serves.
func (px *Proxy) run(t testing.TB, addr, consoleAddr string) error {
	conf, err := config.Load(px.Config)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	opts := slices.Clone(px.opts)
	var conLn net.Listener
	if conf.Console.Listen != "" { // top may have unset it
		if consoleAddr == "" {
			consoleAddr = conf.Console.Listen
		}
		if conLn, err = net.Listen("tcp", consoleAddr); err != nil {
			t.Fatal(err)
		}
		opts = append(opts, service.WithConsoleListener(conLn))
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	started := make(chan string, 1)
	log := slog.New(slog.NewJSONHandler(io.Discard, nil))
	go func() {
		done <- service.Run(ctx, conf, log, append(opts, service.WithListener(ln), service.WithStarted(func(a string) { started <- a }))...)
	}()
	select {
	case <-started:
	case err := <-done:
		cancel()
		_ = ln.Close()
		if conLn != nil {
			_ = conLn.Close()
		}
		if err == nil {
			err = errors.New("the proxy stopped before it served")
		}
		return err
	}
	px.addr = ln.Addr().String()
	if conLn != nil {
		px.consoleAddr = conLn.Addr().String()
	}
	px.stop = func() error {
		cancel()
		return <-done
	}
	return nil
}

// Stop stops the proxy (Restart starts it again); the test's end stops it
// too.
func (px *Proxy) Stop() error {
	if px.stop == nil {
		return nil
	}
	err := px.stop()
	px.stop = nil
	return err
}

// Restart starts a stopped proxy again: the same configuration, factory
// record and address, as a restarted service would be.
func (px *Proxy) Restart(t testing.TB) {
	t.Helper()
	if px.stop != nil {
		t.Fatal("proxytest: Restart of a running proxy")
	}
	if err := px.run(t, px.addr, px.consoleAddr); err != nil {
		t.Fatalf("proxy did not start again: %v", err)
	}
}

func indent(s string) string {
	var b strings.Builder
	for _, l := range strings.Split(strings.TrimSpace(s), "\n") {
		b.WriteString("  " + l + "\n")
	}
	return b.String()
}

// ConsoleSection is the configuration's console section as Start writes it
// (its own listener with the PKI's console certificate) with more settings
// (YAML flow-mapping entries, e.g. "checkEvery: 1s"): for a test's top
// YAML, which replaces whole sections.
func ConsoleSection(core *coretest.Core, more string) string {
	if more != "" {
		more = ", " + more
	}
	return fmt.Sprintf("console: {listen: \"127.0.0.1:0\", tls: {cert: %q, key: %q}%s}", core.ConsoleCert(catest.Proxy), core.ConsoleKey(catest.Proxy), more)
}
