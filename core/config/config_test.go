package config_test

import (
	"testing"

	"github.com/fleetprov/prov/core/config"
)

// The documented example is a valid configuration.
func TestExampleParses(t *testing.T) {
	c, err := config.Load("../../docs/core.example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if c.MQTT.Embedded.Listen != ":8883" || c.Policy.Groups["default"].MQTTGroupID != "fleet" || c.CA.CRLInterval.String() != "1m0s" {
		t.Fatalf("parsed %+v", c)
	}
}
