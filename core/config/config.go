// Package config is prov-core's configuration file (YAML): read strictly
// (an unknown key is an error), every default in one place (Defaults),
// every error naming the key that is wrong.
package config

import (
	"net"
	"net/url"
	"time"

	"github.com/fleetprov/prov/core/policy"
	"github.com/fleetprov/prov/internal/serve"
)

// ErrBadConfig wraps every configuration error.
var ErrBadConfig = serve.ErrBadConfig

// Config is prov-core's configuration.
type Config struct {
	// Listen is the API's TLS address.
	Listen string `yaml:"listen"`
	// Identity is the deployment's root (trustBundle) and core's own
	// certificate (tls: server, and client towards brokers).
	serve.Identity `yaml:",inline"`
	// Signer is the image signer's certificate and Ed25519 key.
	Signer serve.KeyPairFiles `yaml:"signer"`
	// Store is where the registry lives: one bbolt file (engine bbolt, the
	// default: path) or a PostgreSQL database that several cores can share
	// (engine postgres: url).
	Store struct {
		Engine      string        `yaml:"engine"`
		Path        string        `yaml:"path"`
		URL         string        `yaml:"url"`
		LockTimeout time.Duration `yaml:"lockTimeout"`
		// SingleCore says this core is the only one on its PostgreSQL
		// database, which lets it run the embedded MQTT broker (several
		// cores need an external one); checked at start with a lock.
		SingleCore bool `yaml:"singleCore"`
	} `yaml:"store"`
	Policy struct {
		// MachineIDSecretFile holds the key of the machine-id function;
		// empty: images carry no machine-id.
		MachineIDSecretFile string                        `yaml:"machineIdSecretFile"`
		AllowedPrefixes     []string                      `yaml:"allowedPrefixes"`
		DefaultGroup        string                        `yaml:"defaultGroup"`
		Groups              map[string]policy.GroupConfig `yaml:"groups"`
	} `yaml:"policy"`
	Images struct {
		CacheBytes int64 `yaml:"cacheBytes"`
		// Builders is how many bundles the change worker builds at once;
		// 0: every CPU but one (notify.DefaultBuilders), which leaves a
		// CPU to serve requests during a large change.
		Builders int `yaml:"builders"`
		// BuildsPerSecond caps the change worker's builds; 0: no cap.
		BuildsPerSecond float64 `yaml:"buildsPerSecond"`
	} `yaml:"images"`
	MQTT struct {
		// Embedded runs core's broker on this TLS address.
		Embedded struct {
			Listen string `yaml:"listen"`
		} `yaml:"embedded"`
		// External, if set, is a broker URL (tls://host:port) core
		// publishes to with its certificate instead.
		External struct {
			URL      string `yaml:"url"`
			ClientID string `yaml:"clientId"`
		} `yaml:"external"`
	} `yaml:"mqtt"`
	// CA, if set, is the step-ca that core also revokes device
	// certificates at, and whose CRL it checks client certificates with.
	CA struct {
		URL                 string        `yaml:"url"`
		RevokerKey          string        `yaml:"revokerKey"`
		RevokerPasswordFile string        `yaml:"revokerPasswordFile"`
		CRLInterval         time.Duration `yaml:"crlInterval"`
	} `yaml:"ca"`
	// Renewal is how core renews its own certificates (tls and signer) at
	// ca.url; on by default when ca.url is set.
	Renewal serve.RenewalConfig `yaml:"renewal"`
	// Limits are per-identity request rates by role.
	Limits map[string]struct {
		Rate  float64 `yaml:"rate"`
		Burst int     `yaml:"burst"`
	} `yaml:"limits"`
	// Rollouts: how often core looks at running rollouts when no report
	// wakes it (docs/operations.md "Rollouts").
	Rollouts struct {
		Tick time.Duration `yaml:"tick"`
	} `yaml:"rollouts"`
	HTTP serve.HTTPConfig `yaml:"http"`
	Log  serve.LogConfig  `yaml:"log"`
	// Audit is the audit trail's retention (audit.go); off by default.
	Audit Audit `yaml:"audit"`
}

// httpDefaults are core's HTTP limits: devices on slow links fetch
// bundles of up to a few MiB, and keep their connection between polls.
var httpDefaults = serve.HTTPConfig{
	ReadHeaderTimeout: 5 * time.Second,
	ReadTimeout:       30 * time.Second,
	WriteTimeout:      60 * time.Second,
	IdleTimeout:       120 * time.Second,
	ShutdownTimeout:   15 * time.Second,
	MaxHeaderBytes:    16 << 10,
	MaxConnections:    10000,
}

// The store's engines.
const (
	EngineBolt     = "bbolt"
	EnginePostgres = "postgres"
)

// Defaults fills every unset value; all defaults live here.
func (c *Config) Defaults() {
	set := func(p *time.Duration, d time.Duration) {
		if *p == 0 {
			*p = d
		}
	}
	if c.Listen == "" {
		c.Listen = ":8443"
	}
	if c.Store.Engine == "" {
		c.Store.Engine = EngineBolt
	}
	set(&c.Store.LockTimeout, time.Second)
	if len(c.Policy.AllowedPrefixes) == 0 {
		c.Policy.AllowedPrefixes = []string{"/etc/prov/data/"}
	}
	if c.Policy.DefaultGroup == "" {
		c.Policy.DefaultGroup = "default"
	}
	if c.Images.CacheBytes == 0 {
		c.Images.CacheBytes = 256 << 20
	}
	if c.MQTT.External.URL == "" && c.MQTT.Embedded.Listen == "" {
		c.MQTT.Embedded.Listen = ":8883"
	}
	if c.MQTT.External.ClientID == "" {
		c.MQTT.External.ClientID = "prov-core"
	}
	set(&c.CA.CRLInterval, time.Minute)
	set(&c.Rollouts.Tick, 5*time.Second)
	c.Renewal.Default(c.CA.URL != "")
	c.HTTP.Default(httpDefaults)
	c.Log.Default()
	c.Audit.defaults()
}

// Load reads, defaults and validates a configuration file.
func Load(path string) (*Config, error) {
	var c Config
	if err := serve.LoadYAML(path, &c); err != nil {
		return nil, err
	}
	return &c, nil
}

// Parse decodes, defaults and validates a configuration.
func Parse(data []byte) (*Config, error) {
	var c Config
	if err := serve.ParseYAML(data, &c); err != nil {
		return nil, err
	}
	return &c, nil
}

// Validate checks what can be checked without opening files; missing or
// unreadable files are found, and refused, at start.
func (c *Config) Validate() error {
	bad := serve.Bad
	if _, _, err := net.SplitHostPort(c.Listen); err != nil {
		return bad("listen", "%q is not host:port", c.Listen)
	}
	if err := c.Identity.Validate(); err != nil {
		return err
	}
	for _, f := range []struct{ key, v string }{{"signer.cert", c.Signer.Cert}, {"signer.key", c.Signer.Key}} {
		if f.v == "" {
			return bad(f.key, "required")
		}
	}
	if err := c.validateStore(); err != nil {
		return err
	}
	if len(c.Policy.Groups) == 0 {
		return bad("policy.groups", "name at least one group")
	}
	if _, ok := c.Policy.Groups[c.Policy.DefaultGroup]; !ok {
		return bad("policy.defaultGroup", "%q is not one of policy.groups", c.Policy.DefaultGroup)
	}
	if c.MQTT.External.URL != "" {
		if c.MQTT.Embedded.Listen != "" {
			return bad("mqtt", "set embedded.listen or external.url, not both")
		}
		if u, err := url.Parse(c.MQTT.External.URL); err != nil || u.Host == "" {
			return bad("mqtt.external.url", "%q is not tls://host:port", c.MQTT.External.URL)
		}
	} else if _, _, err := net.SplitHostPort(c.MQTT.Embedded.Listen); err != nil {
		return bad("mqtt.embedded.listen", "%q is not host:port", c.MQTT.Embedded.Listen)
	} else if c.Store.Engine == EnginePostgres && !c.Store.SingleCore {
		return bad("mqtt.external.url", "required with store.engine postgres: several cores share the registry, and a device "+
			"connected to one core's embedded broker would miss what the others publish; run an external broker "+
			"(docs/mosquitto.md), or set store.singleCore: true if this core is the only one on its database")
	}
	if c.CA.URL != "" {
		if u, err := url.Parse(c.CA.URL); err != nil || u.Scheme != "https" || u.Host == "" {
			return bad("ca.url", "%q is not https://host:port", c.CA.URL)
		}
		if (c.CA.RevokerKey == "") != (c.CA.RevokerPasswordFile == "") {
			return bad("ca.revokerKey", "give both revokerKey and revokerPasswordFile, or neither")
		}
	} else if c.CA.RevokerKey != "" {
		return bad("ca.url", "required with ca.revokerKey")
	}
	if err := c.Renewal.Validate(c.CA.URL != ""); err != nil {
		return err
	}
	for role, l := range c.Limits {
		switch role {
		case "device", "proxy", "admin", "core":
		default:
			return bad("limits."+role, "not a role (device, proxy, admin, core)")
		}
		if l.Rate <= 0 || l.Burst < 1 {
			return bad("limits."+role, "rate and burst must be positive")
		}
	}
	if err := c.HTTP.Validate(); err != nil {
		return err
	}
	if err := c.Log.Validate(); err != nil {
		return err
	}
	if c.Images.Builders < 0 {
		return bad("images.builders", "0 (every CPU but one) or more")
	}
	if c.Images.BuildsPerSecond < 0 {
		return bad("images.buildsPerSecond", "0 (no cap) or more")
	}
	if c.Images.CacheBytes < 1<<20 {
		return bad("images.cacheBytes", "at least 1 MiB")
	}
	if err := c.Audit.validate(); err != nil {
		return err
	}
	return nil
}

// validateStore checks the store's engine and that it has its own key (and
// not the other engine's, which would be silently ignored).
func (c *Config) validateStore() error {
	bad := serve.Bad
	switch c.Store.Engine {
	case EngineBolt:
		if c.Store.Path == "" {
			return bad("store.path", "required with engine bbolt")
		}
		if c.Store.URL != "" {
			return bad("store.url", "only with engine postgres")
		}
		if c.Store.SingleCore {
			return bad("store.singleCore", "only with engine postgres (a bbolt file has one core)")
		}
	case EnginePostgres:
		if c.Store.URL == "" {
			return bad("store.url", "required with engine postgres")
		}
		if u, err := url.Parse(c.Store.URL); err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
			return bad("store.url", "not a postgres:// URL")
		}
		if c.Store.Path != "" {
			return bad("store.path", "only with engine bbolt")
		}
	default:
		return bad("store.engine", "%q is not bbolt or postgres", c.Store.Engine)
	}
	return nil
}
