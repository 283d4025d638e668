package config_test

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fleetprov/prov/proxy/config"
	"github.com/fleetprov/prov/proxy/vouch"
)

// The documented example is a valid configuration.
func TestExampleParses(t *testing.T) {
	c, err := config.Load("../../docs/proxy.example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	b := c.Vouching.Batches
	if c.Field.CoreURL != c.Core.URL || c.Vouching.Reenrollment != vouch.Deny || len(b) != 1 || b[0].Quota != 5000 ||
		!b[0].NotAfter.Equal(time.Date(2026, 11, 30, 22, 0, 0, 0, time.UTC)) || c.HTTP.UpstreamTimeout != 30*time.Second ||
		!c.Renewal.On() || c.Renewal.Backoff.Max != 30*time.Minute {
		t.Fatalf("parsed %+v", c)
	}
	if c.Console.Listen != ":9444" || c.Console.TLS.Cert != "/srv/prov-pki/console/factory1/cert.pem" {
		t.Fatalf("console %+v", c.Console)
	}
	if c.StartupTimeout != time.Minute || len(c.Status.Networks) != 2 || len(c.Core.Names) != 0 {
		t.Fatalf("startupTimeout %s, status.networks %v, core.names %v", c.StartupTimeout, c.Status.Networks, c.Core.Names)
	}
}

// Without status.networks the status page and metrics go to the factory
// networks; without startupTimeout the proxy waits a minute.
func TestDefaults(t *testing.T) {
	example, err := os.ReadFile("../../docs/proxy.example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var kept []string
	skip := false
	for _, l := range strings.Split(string(example), "\n") {
		switch {
		case strings.HasPrefix(l, "status:"):
			skip = true
			continue
		case skip && strings.HasPrefix(l, "  "):
			continue
		case strings.HasPrefix(l, "startupTimeout:"):
			continue
		}
		skip = false
		kept = append(kept, l)
	}
	p := filepath.Join(t.TempDir(), "proxy.yaml")
	if err := os.WriteFile(p, []byte(strings.Join(kept, "\n")), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := config.Load(p)
	if err != nil {
		t.Fatal(err)
	}
	want, err := netip.ParsePrefix("10.20.0.0/16")
	if err != nil {
		t.Fatal(err)
	}
	if got, err := c.StatusNetworks(); err != nil || len(got) != 1 || got[0] != want || c.StartupTimeout != time.Minute {
		t.Fatalf("status networks %v %v, startupTimeout %s", got, err, c.StartupTimeout)
	}
}

func TestErrorsNameTheKey(t *testing.T) {
	example, err := os.ReadFile("../../docs/proxy.example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ old, new, want string }{
		{`listen: ":9443"`, `listen: "9443"`, "listen"},
		{`core: {url: "https://core.fleet.example.com:8443"}`, `core: {url: "http://core.fleet.example.com:8443"}`, "core.url"},
		{`  mqttUrl: "tls://broker.fleet.example.com:8883"`, `  mqttUrl: "ws://broker"`, "field.mqttUrl"},
		{"  passwordFile: /srv/prov-pki/proxy/factory1/provisioner.password", "", "provisioner.passwordFile"},
		{"  level: info", "  level: loud", "log.level"},
		{"record:", "records:", "records"},
		{"  readTimeout: 10s", "  readTimeout: ten", "readTimeout"},
		{"startupTimeout: 1m", "startupTimeout: -1s", "startupTimeout"},
		{`core: {url: "https://core.fleet.example.com:8443"}`, `core: {url: "https://core.fleet.example.com:8443", names: ["Core 1"]}`, "core.names[0]"},
		{`  networks: ["10.20.0.0/16", "10.99.0.10/32"]`, `  networks: ["10.20.0.0/16", "10.99.0.10"]`, "status.networks"},
		{`  listen: ":9444"`, `  listen: "9444"`, "console.listen"},
		{`  listen: ":9444"`, `  listen: ":9443"`, "console.listen"}, // the enrollment listener's
		{"    cert: /srv/prov-pki/console/factory1/cert.pem", "", "console.tls.cert"},
		{"    key: /srv/prov-pki/console/factory1/key.pem", "", "console.tls.key"},
		{`  listen: ":9444"`, "", "console.tls"}, // a certificate without a listener
		{"  roots: /etc/prov-proxy/tpm-manufacturers.pem", "", "vouching.batches[0].attestation"},
	} {
		t.Run(tc.want, func(t *testing.T) {
			if !strings.Contains(string(example), tc.old) {
				t.Fatalf("the example has no %q", tc.old)
			}
			p := filepath.Join(t.TempDir(), "proxy.yaml")
			if err := os.WriteFile(p, []byte(strings.Replace(string(example), tc.old, tc.new, 1)), 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := config.Load(p)
			if !errors.Is(err, config.ErrBadConfig) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want a bad configuration naming %q", err, tc.want)
			}
		})
	}
}
