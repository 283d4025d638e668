package serve

import "time"

// RenewalConfig is the renewal block of a service's configuration: how the
// service renews its own certificates at step-ca (internal/renewal).
type RenewalConfig struct {
	// Enabled turns renewal on or off; unset, it is on when the service
	// knows step-ca's URL. Off, the certificates are still watched: their
	// expiry is a metric, and a warning in /readyz and the logs once
	// little of their life is left.
	Enabled *bool `yaml:"enabled"`
	// At is the fraction of a certificate's life after which it is
	// renewed (default 2/3, as the devices do).
	At float64 `yaml:"at"`
	// WarnLeft is the fraction of a certificate's life below which, not
	// yet renewed, it is reported in /readyz and the logs (default 1/6).
	// It must be below 1-At, so that a renewal on time never warns.
	WarnLeft float64 `yaml:"warnLeft"`
	// Backoff bounds the wait between failed attempts.
	Backoff Backoff `yaml:"backoff"`
}

// Backoff is a wait between failed attempts that starts at Min and doubles
// up to Max, each wait jittered.
type Backoff struct {
	Min time.Duration `yaml:"min"`
	Max time.Duration `yaml:"max"`
}

// Default fills every unset value; caKnown says whether the service has
// step-ca's URL, without which renewal is off.
func (c *RenewalConfig) Default(caKnown bool) {
	if c.Enabled == nil {
		c.Enabled = &caKnown
	}
	if c.At == 0 {
		c.At = 2.0 / 3
	}
	if c.WarnLeft == 0 {
		c.WarnLeft = 1.0 / 6
	}
	if c.Backoff.Min == 0 {
		c.Backoff.Min = 30 * time.Second
	}
	if c.Backoff.Max == 0 {
		c.Backoff.Max = 30 * time.Minute
	}
}

// On says whether renewal is enabled (after Default).
func (c *RenewalConfig) On() bool { return c.Enabled != nil && *c.Enabled }

// Validate checks the block (after Default); caKnown as for Default.
func (c *RenewalConfig) Validate(caKnown bool) error {
	if c.On() && !caKnown {
		return Bad("renewal.enabled", "renewal needs ca.url")
	}
	if c.At <= 0 || c.At >= 1 {
		return Bad("renewal.at", "a fraction of the certificate's life, between 0 and 1, got %g", c.At)
	}
	if c.WarnLeft <= 0 || c.WarnLeft >= 1-c.At {
		return Bad("renewal.warnLeft", "a fraction of the certificate's life below 1 - renewal.at (%g), got %g", 1-c.At, c.WarnLeft)
	}
	if c.Backoff.Min <= 0 || c.Backoff.Max < c.Backoff.Min {
		return Bad("renewal.backoff", "want 0 < min <= max, got min %s, max %s", c.Backoff.Min, c.Backoff.Max)
	}
	return nil
}
