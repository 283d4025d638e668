package config_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/fleetprov/prov/core/config"
)

// The documented example is a valid configuration.
func TestExampleParses(t *testing.T) {
	c, err := config.Load("../../docs/core.example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if c.MQTT.Embedded.Listen != ":8883" || c.Policy.Groups["default"].MQTTGroupID != "fleet" || c.CA.CRLInterval.String() != "1m0s" ||
		!c.Renewal.On() || c.Renewal.At != 0.6667 {
		t.Fatalf("parsed %+v", c)
	}
}

// Renewal is on by default with step-ca's URL, off without it, and cannot
// be turned on without it.
func TestRenewalNeedsTheCA(t *testing.T) {
	base := "trustBundle: r.pem\ntls: {cert: c.pem, key: k.pem}\nsigner: {cert: s.pem, key: s.key}\nstore: {path: r.db}\npolicy: {groups: {default: {}}}\n"
	for _, tc := range []struct {
		yaml string
		on   bool
		err  string
	}{
		{base, false, ""},
		{base + "ca: {url: \"https://ca.example.com:9000\"}\n", true, ""},
		{base + "ca: {url: \"https://ca.example.com:9000\"}\nrenewal: {enabled: false}\n", false, ""},
		{base + "renewal: {enabled: true}\n", false, "renewal.enabled"},
	} {
		c, err := config.Parse([]byte(tc.yaml))
		switch {
		case tc.err != "":
			if !errors.Is(err, config.ErrBadConfig) || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%q: %v, want an error naming %s", tc.yaml, err, tc.err)
			}
		case err != nil || c.Renewal.On() != tc.on:
			t.Errorf("%q: %+v %v, want renewal on: %v", tc.yaml, c, err, tc.on)
		}
	}
}
