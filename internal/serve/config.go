// Package serve is the scaffolding prov-core and prov-proxy share: the
// configuration blocks every service has (its own identity, http, log),
// loading and checking the service's own identity, and serving an HTTP API
// over TLS with bounded connections, headers and time, and an orderly
// shutdown. It is plumbing, not a contract: nothing here is on the wire.
package serve

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/fleetprov/prov/pki"
)

// ErrBadConfig wraps every configuration error of the services.
var ErrBadConfig = errors.New("bad configuration")

// Bad is a configuration error naming its key.
func Bad(key, format string, args ...any) error {
	return fmt.Errorf("%w: %s: %s", ErrBadConfig, key, fmt.Sprintf(format, args...))
}

// KeyPairFiles is a certificate chain (PEM, leaf first) and its key.
type KeyPairFiles struct {
	Cert string `yaml:"cert"`
	Key  string `yaml:"key"`
}

// Identity is the configuration of a service's own identity, inlined at
// the top of its file: the deployment's root and the service's TLS pair.
type Identity struct {
	TrustBundle string       `yaml:"trustBundle"`
	TLS         KeyPairFiles `yaml:"tls"`
}

// Validate checks that every file is named.
func (c *Identity) Validate() error {
	for _, f := range []struct{ key, v string }{{"trustBundle", c.TrustBundle}, {"tls.cert", c.TLS.Cert}, {"tls.key", c.TLS.Key}} {
		if f.v == "" {
			return Bad(f.key, "required")
		}
	}
	return nil
}

// Self is a service's identity as loaded at start.
type Self struct {
	Roots   *pki.TrustBundle
	RootPEM []byte // the root file as the operator gave it
	KeyPair *pki.KeyPair
	ID      pki.Identity
}

// LoadSelf reads the root and the pair and checks that the certificate
// verifies under the root with the service's role and its key usage: a
// service refuses to start as somebody else (fail closed). Errors name the
// configuration key.
func (c *Identity) LoadSelf(role pki.Role) (*Self, error) {
	roots, err := pki.LoadTrustBundle(c.TrustBundle)
	if err != nil {
		return nil, fmt.Errorf("trustBundle: %w", err)
	}
	rootPEM, err := os.ReadFile(c.TrustBundle)
	if err != nil {
		return nil, fmt.Errorf("trustBundle: %w", err)
	}
	kp, err := pki.LoadKeyPair(c.TLS.Cert, c.TLS.Key)
	if err != nil {
		return nil, fmt.Errorf("tls: %w", err)
	}
	id, err := roots.Verify(kp.Chain(), pki.VerifyOptions{KeyUsage: role.ExtKeyUsage(), Roles: []pki.Role{role}})
	if err != nil {
		return nil, fmt.Errorf("tls: the %s certificate %s: %w", role, c.TLS.Cert, err)
	}
	return &Self{Roots: roots, RootPEM: rootPEM, KeyPair: kp, ID: id}, nil
}

// HTTPConfig is the http block of a service's configuration: the limits
// of its HTTP server. Zero values take the service's defaults.
type HTTPConfig struct {
	ReadHeaderTimeout time.Duration `yaml:"readHeaderTimeout"`
	ReadTimeout       time.Duration `yaml:"readTimeout"`
	WriteTimeout      time.Duration `yaml:"writeTimeout"`
	IdleTimeout       time.Duration `yaml:"idleTimeout"`
	// MaxHeaderBytes bounds a request's header.
	MaxHeaderBytes int `yaml:"maxHeaderBytes"`
	// MaxConnections bounds open connections, so a flood of handshakes
	// cannot grow goroutines and memory without bound.
	MaxConnections int `yaml:"maxConnections"`
	// ShutdownTimeout bounds how long requests in flight may finish.
	ShutdownTimeout time.Duration `yaml:"shutdownTimeout"`
}

// Default fills every unset value from d.
func (c *HTTPConfig) Default(d HTTPConfig) {
	dur := func(p *time.Duration, v time.Duration) {
		if *p == 0 {
			*p = v
		}
	}
	dur(&c.ReadHeaderTimeout, d.ReadHeaderTimeout)
	dur(&c.ReadTimeout, d.ReadTimeout)
	dur(&c.WriteTimeout, d.WriteTimeout)
	dur(&c.IdleTimeout, d.IdleTimeout)
	dur(&c.ShutdownTimeout, d.ShutdownTimeout)
	if c.MaxHeaderBytes == 0 {
		c.MaxHeaderBytes = d.MaxHeaderBytes
	}
	if c.MaxConnections == 0 {
		c.MaxConnections = d.MaxConnections
	}
}

// Validate refuses negative or zero limits (after Default).
func (c *HTTPConfig) Validate() error {
	for _, d := range []struct {
		key string
		v   time.Duration
	}{{"readHeaderTimeout", c.ReadHeaderTimeout}, {"readTimeout", c.ReadTimeout}, {"writeTimeout", c.WriteTimeout},
		{"idleTimeout", c.IdleTimeout}, {"shutdownTimeout", c.ShutdownTimeout}} {
		if d.v <= 0 {
			return Bad("http."+d.key, "must be positive, got %s", d.v)
		}
	}
	if c.MaxHeaderBytes < 1<<10 {
		return Bad("http.maxHeaderBytes", "at least 1024, got %d", c.MaxHeaderBytes)
	}
	if c.MaxConnections < 1 {
		return Bad("http.maxConnections", "at least 1, got %d", c.MaxConnections)
	}
	return nil
}

// LogConfig is the log block of a service's configuration.
type LogConfig struct {
	// Level is debug, info (the default), warn or error.
	Level string `yaml:"level"`
}

// Default sets the level to info when unset.
func (c *LogConfig) Default() {
	if c.Level == "" {
		c.Level = "info"
	}
}

// Validate checks the level.
func (c *LogConfig) Validate() error {
	switch c.Level {
	case "debug", "info", "warn", "error":
		return nil
	}
	return Bad("log.level", "%q is not debug, info, warn or error", c.Level)
}

// Logger is the service's log: JSON lines on w at the level.
func (c *LogConfig) Logger(w interface{ Write([]byte) (int, error) }) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(c.Level)); err != nil {
		return nil, Bad("log.level", "%v", err)
	}
	return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: l})), nil
}

// Config is what a service's configuration does: fill its defaults, all in
// one place, and check itself, naming the key of any error.
type Config interface {
	Defaults()
	Validate() error
}

// LoadYAML reads path into c strictly (an unknown key is an error), fills
// the defaults and validates.
func LoadYAML(path string, c Config) error {
	data, err := os.ReadFile(path) //nolint:gosec // the operator names it
	if err != nil {
		return fmt.Errorf("%w: %w", ErrBadConfig, err)
	}
	if err := ParseYAML(data, c); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return nil
}

// ParseYAML is LoadYAML on bytes.
func ParseYAML(data []byte, c Config) error {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(c); err != nil {
		return fmt.Errorf("%w: %w", ErrBadConfig, err)
	}
	c.Defaults()
	return c.Validate()
}
