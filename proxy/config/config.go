// Package config is prov-proxy's configuration file (YAML): read strictly,
// defaults in one place, every error naming its key.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/fleetprov/prov/proxy/vouch"
)

// ErrBadConfig wraps every configuration error.
var ErrBadConfig = errors.New("bad configuration")

// Config is prov-proxy's configuration.
type Config struct {
	// Listen is the factory-side TLS address devices enroll at.
	Listen      string `yaml:"listen"`
	TrustBundle string `yaml:"trustBundle"`
	// TLS is the proxy's identity: server towards devices, client towards
	// core.
	TLS struct {
		Cert string `yaml:"cert"`
		Key  string `yaml:"key"`
	} `yaml:"tls"`
	// Provisioner is the proxy's step-ca provisioner key (as prov-pki init
	// wrote it).
	Provisioner struct {
		Key          string `yaml:"key"`
		PasswordFile string `yaml:"passwordFile"`
	} `yaml:"provisioner"`
	Core struct {
		URL string `yaml:"url"`
	} `yaml:"core"`
	CA struct {
		URL string `yaml:"url"`
	} `yaml:"ca"`
	// Field is what devices are told for the field; core's and the CA's
	// URLs default to the ones above.
	Field struct {
		CoreURL string `yaml:"coreUrl"`
		CAURL   string `yaml:"caUrl"`
		MQTTURL string `yaml:"mqttUrl"`
	} `yaml:"field"`
	Vouching vouch.Config `yaml:"vouching"`
	// CertificateLifetime, if set, asks for device certificates shorter
	// than the provisioner's default.
	CertificateLifetime time.Duration `yaml:"certificateLifetime"`
	Record              struct {
		Path string `yaml:"path"`
	} `yaml:"record"`
	HTTP struct {
		ReadHeaderTimeout time.Duration `yaml:"readHeaderTimeout"`
		ReadTimeout       time.Duration `yaml:"readTimeout"`
		WriteTimeout      time.Duration `yaml:"writeTimeout"`
		IdleTimeout       time.Duration `yaml:"idleTimeout"`
		ShutdownTimeout   time.Duration `yaml:"shutdownTimeout"`
		UpstreamTimeout   time.Duration `yaml:"upstreamTimeout"`
	} `yaml:"http"`
	Log struct {
		Level string `yaml:"level"`
	} `yaml:"log"`
}

// Defaults fills every unset value; all defaults live here.
func (c *Config) Defaults() {
	set := func(p *time.Duration, d time.Duration) {
		if *p == 0 {
			*p = d
		}
	}
	if c.Listen == "" {
		c.Listen = ":9443"
	}
	if c.Field.CoreURL == "" {
		c.Field.CoreURL = c.Core.URL
	}
	if c.Field.CAURL == "" {
		c.Field.CAURL = c.CA.URL
	}
	set(&c.HTTP.ReadHeaderTimeout, 5*time.Second)
	set(&c.HTTP.ReadTimeout, 10*time.Second)
	set(&c.HTTP.WriteTimeout, 60*time.Second)
	set(&c.HTTP.IdleTimeout, 30*time.Second)
	set(&c.HTTP.ShutdownTimeout, 15*time.Second)
	set(&c.HTTP.UpstreamTimeout, 30*time.Second)
	if c.Log.Level == "" {
		c.Log.Level = "info"
	}
}

// Load reads, defaults and validates a configuration file.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path) //nolint:gosec // the operator names it
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadConfig, err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	var c Config
	if err := dec.Decode(&c); err != nil {
		return nil, fmt.Errorf("%s: %w: %w", path, ErrBadConfig, err)
	}
	c.Defaults()
	if err := c.Validate(); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &c, nil
}

// Validate checks what can be checked without opening files.
func (c *Config) Validate() error {
	bad := func(key, format string, args ...any) error {
		return fmt.Errorf("%w: %s: %s", ErrBadConfig, key, fmt.Sprintf(format, args...))
	}
	if _, _, err := net.SplitHostPort(c.Listen); err != nil {
		return bad("listen", "%q is not host:port", c.Listen)
	}
	for key, v := range map[string]string{"trustBundle": c.TrustBundle, "tls.cert": c.TLS.Cert, "tls.key": c.TLS.Key,
		"provisioner.key": c.Provisioner.Key, "provisioner.passwordFile": c.Provisioner.PasswordFile, "record.path": c.Record.Path,
		"field.mqttUrl": c.Field.MQTTURL} {
		if v == "" {
			return bad(key, "required")
		}
	}
	for key, v := range map[string]string{"core.url": c.Core.URL, "ca.url": c.CA.URL, "field.coreUrl": c.Field.CoreURL, "field.caUrl": c.Field.CAURL} {
		if u, err := url.Parse(v); err != nil || u.Scheme != "https" || u.Host == "" {
			return bad(key, "%q is not https://host:port", v)
		}
	}
	if u, err := url.Parse(c.Field.MQTTURL); err != nil || (u.Scheme != "tls" && u.Scheme != "mqtts") || u.Host == "" {
		return bad("field.mqttUrl", "%q is not tls://host:port", c.Field.MQTTURL)
	}
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		return bad("log.level", "%q is not debug, info, warn or error", c.Log.Level)
	}
	return nil
}
