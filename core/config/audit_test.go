package config_test

import (
	"strings"
	"testing"
	"time"

	"github.com/fleetprov/prov/core/config"
)

// Retention is off by default; it is written in days or as a duration,
// and an error names the key.
func TestAuditRetention(t *testing.T) {
	base := "trustBundle: r.pem\ntls: {cert: c.pem, key: k.pem}\nsigner: {cert: s.pem, key: s.key}\nstore: {path: r.db}\npolicy: {groups: {default: {}}}\n"
	day := 24 * time.Hour
	for _, tc := range []struct {
		audit       string
		keep, every time.Duration
		err         string
	}{
		{"", 0, day, ""},
		{"audit: {retention: 400d}", 400 * day, day, ""},
		{"audit: {retention: 36h, pruneEvery: 6h}", 36 * time.Hour, 6 * time.Hour, ""},
		{"audit: {retention: 1h}", 0, 0, "audit.retention"},
		{"audit: {retention: 400days}", 0, 0, "400days"},
		{"audit: {retention: 400d, pruneEvery: -1h}", 0, 0, "audit.pruneEvery"},
	} {
		c, err := config.Parse([]byte(base + tc.audit + "\n"))
		switch {
		case tc.err != "":
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%q: %v, want an error naming %s", tc.audit, err, tc.err)
			}
		case err != nil || c.Audit.Retention.Duration() != tc.keep || c.Audit.PruneEvery.Duration() != tc.every:
			t.Errorf("%q: %+v %v, want retention %s every %s", tc.audit, c.Audit, err, tc.keep, tc.every)
		}
	}
}
