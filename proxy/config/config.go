// Package config is prov-proxy's configuration file (YAML): read strictly,
// defaults in one place, every error naming its key.
package config

import (
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"strings"
	"time"

	"github.com/fleetprov/prov/internal/serve"
	"github.com/fleetprov/prov/pki"
	"github.com/fleetprov/prov/proxy/status"
	"github.com/fleetprov/prov/proxy/vouch"
)

// ErrBadConfig wraps every configuration error.
var ErrBadConfig = serve.ErrBadConfig

// Config is prov-proxy's configuration.
type Config struct {
	// Listen is the factory-side TLS address devices enroll at.
	Listen string `yaml:"listen"`
	// Identity is the deployment's root (trustBundle) and the proxy's own
	// certificate (tls: server towards devices, client towards core).
	serve.Identity `yaml:",inline"`
	// Provisioner is the proxy's step-ca provisioner key (as prov-pki init
	// wrote it).
	Provisioner struct {
		Key          string `yaml:"key"`
		PasswordFile string `yaml:"passwordFile"`
	} `yaml:"provisioner"`
	// Core is prov-core's API. Its server certificate must name core's
	// role in this deployment's trust domain; Names, if set, are the only
	// core names accepted (spiffe://<trust-domain>/core/<name>).
	Core struct {
		URL   string   `yaml:"url"`
		Names []string `yaml:"names"`
	} `yaml:"core"`
	// CA is step-ca. Its server certificate must be step-ca's own: from
	// the root, for the URL's host, naming no identity.
	CA struct {
		URL string `yaml:"url"`
	} `yaml:"ca"`
	// StartupTimeout bounds how long the proxy waits at start for core and
	// step-ca to answer as themselves before it refuses to start; a server
	// that answers with the wrong certificate ends the wait at once.
	StartupTimeout time.Duration `yaml:"startupTimeout"`
	// Status says who may read the status page and /metrics.
	Status struct {
		// Networks (CIDRs) default to vouching.networks.
		Networks []string `yaml:"networks"`
	} `yaml:"status"`
	// Console is the factory console (its page is GET / on the factory
	// side; who may read it is status.networks).
	Console struct {
		// Stations name the line's stations by their source networks
		// (CIDRs; the first that holds an address names it), so an
		// attempt shows "line 2 station B" rather than an address.
		Stations []struct {
			Network string `yaml:"network"`
			Name    string `yaml:"name"`
		} `yaml:"stations"`
		// CheckEvery is how often the proxy checks what the health
		// panel shows (core and step-ca, its provisioner at step-ca, the
		// clock offset to core, the factory record's chain).
		CheckEvery time.Duration `yaml:"checkEvery"`
		// Listen, if set, is a TLS address (host:port) of the console
		// alone, served with TLS's certificate: the proxy's console
		// certificate (prov-pki init writes console/<proxy>/), which
		// names the proxy's hosts and no identity. Browsers refuse the
		// proxy's identity certificate (its URI SAN under the
		// intermediate's URI name constraint), so a kiosk opens this one;
		// unset, the console is on the enrollment listener only.
		Listen string             `yaml:"listen"`
		TLS    serve.KeyPairFiles `yaml:"tls"`
	} `yaml:"console"`
	// Field is what devices are told for the field; core's and the CA's
	// URLs default to the ones above.
	Field struct {
		CoreURL string `yaml:"coreUrl"`
		CAURL   string `yaml:"caUrl"`
		MQTTURL string `yaml:"mqttUrl"`
	} `yaml:"field"`
	Vouching vouch.Config `yaml:"vouching"`
	// Attestation verifies boards' TPM attestations (proxy/attest).
	Attestation struct {
		// Roots is a PEM file of the TPM manufacturers' EK certificate
		// roots, with the intermediates an EK certificate chains through
		// (a TPM holds its EK certificate alone). None: no board can
		// enroll with an attested key, and a batch cannot require one.
		Roots string `yaml:"roots"`
	} `yaml:"attestation"`
	// CertificateLifetime, if set, asks for device certificates shorter
	// than the provisioner's default.
	CertificateLifetime time.Duration `yaml:"certificateLifetime"`
	Record              struct {
		Path string `yaml:"path"`
	} `yaml:"record"`
	HTTP struct {
		serve.HTTPConfig `yaml:",inline"`
		// UpstreamTimeout bounds one enrollment's calls to core and step-ca.
		UpstreamTimeout time.Duration `yaml:"upstreamTimeout"`
	} `yaml:"http"`
	Log serve.LogConfig `yaml:"log"`
	// Renewal is how the proxy renews its own certificate (tls) at ca.url;
	// on by default.
	Renewal serve.RenewalConfig `yaml:"renewal"`
}

// httpDefaults are the proxy's HTTP limits: an enrollment is one small
// request and answer on the factory network; the connection cap is core's.
var httpDefaults = serve.HTTPConfig{
	ReadHeaderTimeout: 5 * time.Second,
	ReadTimeout:       10 * time.Second,
	WriteTimeout:      60 * time.Second,
	IdleTimeout:       30 * time.Second,
	ShutdownTimeout:   15 * time.Second,
	MaxHeaderBytes:    16 << 10,
	MaxConnections:    10000,
}

// Defaults fills every unset value; all defaults live here.
func (c *Config) Defaults() {
	if c.Listen == "" {
		c.Listen = ":9443"
	}
	if c.Field.CoreURL == "" {
		c.Field.CoreURL = c.Core.URL
	}
	if c.Field.CAURL == "" {
		c.Field.CAURL = c.CA.URL
	}
	if c.StartupTimeout == 0 {
		c.StartupTimeout = time.Minute
	}
	if len(c.Status.Networks) == 0 {
		c.Status.Networks = c.Vouching.Networks
	}
	if c.Console.CheckEvery == 0 {
		c.Console.CheckEvery = 15 * time.Second
	}
	c.HTTP.Default(httpDefaults)
	if c.HTTP.UpstreamTimeout == 0 {
		c.HTTP.UpstreamTimeout = 30 * time.Second
	}
	c.Log.Default()
	c.Renewal.Default(c.CA.URL != "")
}

// Load reads, defaults and validates a configuration file.
func Load(path string) (*Config, error) {
	var c Config
	if err := serve.LoadYAML(path, &c); err != nil {
		return nil, err
	}
	return &c, nil
}

// StatusNetworks parses status.networks (after Defaults: vouching.networks
// when unset). None at all is an error rather than a page served to nobody.
func (c *Config) StatusNetworks() ([]netip.Prefix, error) {
	if len(c.Status.Networks) == 0 {
		return nil, serve.Bad("status.networks", "none given, and vouching.networks (the default) names none")
	}
	out := make([]netip.Prefix, 0, len(c.Status.Networks))
	for _, n := range c.Status.Networks {
		p, err := netip.ParsePrefix(n)
		if err != nil {
			return nil, serve.Bad("status.networks", "%q is not a CIDR: %v", n, err)
		}
		out = append(out, p.Masked())
	}
	return out, nil
}

// Stations parses console.stations.
func (c *Config) Stations() ([]status.Station, error) {
	out := make([]status.Station, 0, len(c.Console.Stations))
	for i, s := range c.Console.Stations {
		key := fmt.Sprintf("console.stations[%d]", i)
		p, err := netip.ParsePrefix(s.Network)
		if err != nil {
			return nil, serve.Bad(key+".network", "%q is not a CIDR: %v", s.Network, err)
		}
		if strings.TrimSpace(s.Name) == "" || len(s.Name) > 64 {
			return nil, serve.Bad(key+".name", "want 1 to 64 characters, got %q", s.Name)
		}
		out = append(out, status.Station{Network: p.Masked(), Name: s.Name})
	}
	return out, nil
}

// Validate checks what can be checked without opening files.
func (c *Config) Validate() error {
	bad := serve.Bad
	if _, _, err := net.SplitHostPort(c.Listen); err != nil {
		return bad("listen", "%q is not host:port", c.Listen)
	}
	if err := c.Identity.Validate(); err != nil {
		return err
	}
	for _, f := range []struct{ key, v string }{{"provisioner.key", c.Provisioner.Key}, {"provisioner.passwordFile", c.Provisioner.PasswordFile},
		{"record.path", c.Record.Path}, {"field.mqttUrl", c.Field.MQTTURL}} {
		if f.v == "" {
			return bad(f.key, "required")
		}
	}
	for _, f := range []struct{ key, v string }{{"core.url", c.Core.URL}, {"ca.url", c.CA.URL}, {"field.coreUrl", c.Field.CoreURL}, {"field.caUrl", c.Field.CAURL}} {
		if u, err := url.Parse(f.v); err != nil || u.Scheme != "https" || u.Host == "" {
			return bad(f.key, "%q is not https://host:port", f.v)
		}
	}
	if u, err := url.Parse(c.Field.MQTTURL); err != nil || (u.Scheme != "tls" && u.Scheme != "mqtts") || u.Host == "" {
		return bad("field.mqttUrl", "%q is not tls://host:port", c.Field.MQTTURL)
	}
	for i, n := range c.Core.Names {
		if err := pki.ValidateName(n); err != nil {
			return bad(fmt.Sprintf("core.names[%d]", i), "%v", err)
		}
	}
	if c.StartupTimeout < 0 {
		return bad("startupTimeout", "must not be negative, got %s", c.StartupTimeout)
	}
	if _, err := c.StatusNetworks(); err != nil {
		return err
	}
	for i, b := range c.Vouching.Batches {
		if b.Attestation == vouch.AttestationRequired && c.Attestation.Roots == "" {
			return bad(fmt.Sprintf("vouching.batches[%d].attestation", i), "required, but attestation.roots names no manufacturer roots to verify it with")
		}
	}
	if _, err := c.Stations(); err != nil {
		return err
	}
	if c.Console.CheckEvery < 0 {
		return bad("console.checkEvery", "must be positive, got %s", c.Console.CheckEvery)
	}
	if err := c.validateConsoleListener(); err != nil {
		return err
	}
	if c.HTTP.UpstreamTimeout <= 0 {
		return bad("http.upstreamTimeout", "must be positive, got %s", c.HTTP.UpstreamTimeout)
	}
	if err := c.HTTP.Validate(); err != nil {
		return err
	}
	if err := c.Renewal.Validate(c.CA.URL != ""); err != nil {
		return err
	}
	return c.Log.Validate()
}

// validateConsoleListener checks console.listen and console.tls: both or
// neither, and not the enrollment listener's address.
func (c *Config) validateConsoleListener() error {
	bad := serve.Bad
	con := c.Console
	if con.Listen == "" {
		if con.TLS.Cert != "" || con.TLS.Key != "" {
			return bad("console.tls", "set without console.listen")
		}
		return nil
	}
	_, port, err := net.SplitHostPort(con.Listen)
	if err != nil {
		return bad("console.listen", "%q is not host:port", con.Listen)
	}
	if con.Listen == c.Listen && port != "0" { // port 0: each its own
		return bad("console.listen", "%q is the enrollment listener's address", con.Listen)
	}
	if con.TLS.Cert == "" {
		return bad("console.tls.cert", "required with console.listen (the proxy's console certificate: prov-pki init writes console/<proxy>/cert.pem)")
	}
	if con.TLS.Key == "" {
		return bad("console.tls.key", "required with console.listen")
	}
	return nil
}
