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

// The store is bbolt by default; each engine needs its own key and
// refuses the other's, and every error names the key that is wrong.
func TestStoreEngine(t *testing.T) {
	base := "trustBundle: r.pem\ntls: {cert: c.pem, key: k.pem}\nsigner: {cert: s.pem, key: s.key}\npolicy: {groups: {default: {}}}\n"
	for _, tc := range []struct {
		store, engine, err string
	}{
		{"{path: r.db}", config.EngineBolt, ""},
		{"{engine: bbolt, path: r.db}", config.EngineBolt, ""},
		{`{engine: postgres, url: "postgres://core@db.fleet.example.com/prov?sslmode=verify-full", singleCore: true}`, config.EnginePostgres, ""},
		{`{engine: postgres, url: "postgres://db/prov"}`, "", "mqtt.external.url"}, // several cores, the embedded broker
		{`{path: r.db, singleCore: true}`, "", "store.singleCore"},
		{"{}", "", "store.path"},
		{`{path: r.db, url: "postgres://db/prov"}`, "", "store.url"},
		{"{engine: postgres}", "", "store.url"},
		{`{engine: postgres, url: "host=/run/postgresql dbname=prov"}`, "", "store.url"},
		{`{engine: postgres, url: "postgres://db/prov", path: r.db}`, "", "store.path"},
		{"{engine: postgres, url: \"postgres://db/prov\"}\nmqtt: {external: {url: \"tls://mqtt:8883\"}}", config.EnginePostgres, ""},
		{"{engine: sqlite, path: r.db}", "", "store.engine"},
	} {
		c, err := config.Parse([]byte(base + "store: " + tc.store + "\n"))
		switch {
		case tc.err != "":
			if !errors.Is(err, config.ErrBadConfig) || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("store: %s: %v, want an error naming %s", tc.store, err, tc.err)
			}
		case err != nil || c.Store.Engine != tc.engine:
			t.Errorf("store: %s: %v, want engine %s", tc.store, err, tc.engine)
		}
	}
}

// The change worker's pace: 0 (the default) or more builders, 0 (no cap)
// or more builds per second; a negative one is an error naming its key.
func TestImagesPace(t *testing.T) {
	base := "trustBundle: r.pem\ntls: {cert: c.pem, key: k.pem}\nsigner: {cert: s.pem, key: s.key}\nstore: {path: r.db}\npolicy: {groups: {default: {}}}\n"
	for _, tc := range []struct {
		images   string
		builders int
		rate     float64
		err      string
	}{
		{"{}", 0, 0, ""},
		{"{builders: 3, buildsPerSecond: 2500}", 3, 2500, ""},
		{"{builders: -1}", 0, 0, "images.builders"},
		{"{buildsPerSecond: -5}", 0, 0, "images.buildsPerSecond"},
	} {
		c, err := config.Parse([]byte(base + "images: " + tc.images + "\n"))
		switch {
		case tc.err != "":
			if !errors.Is(err, config.ErrBadConfig) || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("images: %s: %v, want an error naming %s", tc.images, err, tc.err)
			}
		case err != nil || c.Images.Builders != tc.builders || c.Images.BuildsPerSecond != tc.rate:
			t.Errorf("images: %s: %+v %v", tc.images, c.Images, err)
		}
	}
}
