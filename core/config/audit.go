package config

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/fleetprov/prov/internal/serve"
)

// Audit is the audit trail's retention, applied by core itself; off
// unless retention is set.
type Audit struct {
	// Retention is how long events are kept whole ("400d", "9600h"); older
	// ones are pruned but for each device's and group's newest of each
	// action, and a summary of what went (docs/operations.md).
	Retention Period `yaml:"retention"`
	// PruneEvery is how often core prunes (and once at start); 24h by
	// default.
	PruneEvery Period `yaml:"pruneEvery"`
}

// Period is a duration that may also be written in days ("400d"), as
// retention usually is.
type Period time.Duration

// Duration is the period as a time.Duration.
func (p Period) Duration() time.Duration { return time.Duration(p) }

// UnmarshalText reads "Nd" or a Go duration ("36h").
func (p *Period) UnmarshalText(b []byte) error {
	s := string(b)
	if days, ok := strings.CutSuffix(s, "d"); ok {
		n, err := strconv.ParseUint(days, 10, 32)
		if err != nil {
			return fmt.Errorf("%q: want a number of days (400d) or a duration (36h)", s)
		}
		*p = Period(time.Duration(n) * 24 * time.Hour)
		return nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("%q: want a number of days (400d) or a duration (36h)", s)
	}
	*p = Period(d)
	return nil
}

// minRetention: a trail pruned to less than a day would lose what an
// operator looks at the morning after.
const minRetention = 24 * time.Hour

func (a *Audit) defaults() {
	if a.PruneEvery == 0 {
		a.PruneEvery = Period(24 * time.Hour)
	}
}

func (a *Audit) validate() error {
	switch {
	case a.Retention < 0:
		return serve.Bad("audit.retention", "negative")
	case a.Retention != 0 && time.Duration(a.Retention) < minRetention:
		return serve.Bad("audit.retention", "at least %s (or unset: keep everything)", minRetention)
	case a.PruneEvery <= 0:
		return serve.Bad("audit.pruneEvery", "must be positive")
	}
	return nil
}
