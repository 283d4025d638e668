package main

import (
	"testing"

	"github.com/fleetprov/prov/internal/deptest"
)

// deviceTargets are the boards' platforms (Raspberry Pi 4: arm64;
// BeagleBone Black and AI: armv7) and the build host's.
var deviceTargets = []deptest.Platform{
	{GOOS: "linux", GOARCH: "arm64"},
	{GOOS: "linux", GOARCH: "arm", GOARM: "7"},
	{GOOS: "linux", GOARCH: "amd64"},
}

// forbidden is what the device binary must never link: the CA, the HTTP
// router and the store are core's and the proxy's, and would bloat a binary
// that runs on a BeagleBone Black.
var forbidden = deptest.Join(deptest.StepCA, map[string]string{
	"github.com/gorilla/mux":              "the servers' HTTP router; the device serves nothing",
	"github.com/jackc/pgx":                "the PostgreSQL driver: core's registry engine (core/store/postgres) and step-ca's nosql",
	"go.etcd.io/bbolt":                    "core's registry store; the device's state is plain files",
	"github.com/mochi-mqtt/server":        "core's embedded MQTT broker; the device is only a client",
	"github.com/prometheus/client_golang": "the servers' metrics",
	deptest.Module + "/pki/ca":            "embeds step-ca's server and authority; the device renews over HTTP with pki/stepca",
	deptest.Module + "/pki/deployment":    "the PKI directory and step-ca's configuration (links step-ca's authority/config)",
	deptest.Module + "/pki/token":         "mints provisioner tokens; a device holds no provisioner key",
})

// deviceRules: besides its own code, the device links only the contracts
// the other parts publish for it and the light pki packages; never core's or
// the proxy's internals.
var deviceRules = deptest.Rules{
	Forbidden: forbidden,
	Own: map[string]string{
		"deviceclient/...":    "the device client's own code",
		"core/contract/...":   "core's contracts, made to be shared: the API's wire types and client, the hardware-ID rule, the image spec",
		"proxy/contract/...":  "the enrollment API's wire types",
		"pki":                 "identities, the trust bundle, TLS configurations, chain verification with a clock floor",
		"pki/signedimage":     "streaming verification of the signed bundle",
		"pki/stepca":          "renewal at step-ca (POST /1.0/renew) with the light client",
		"internal/cmdline":    "the commands' flag parsing",
		"internal/atomicfile": "the state directory's files are replaced atomically and durably",
		"internal/buildinfo":  "the binary's build time, the lowest clock floor of a board without a real-time clock (standard library only)",
		"internal/untrusted":  "how untrusted input appears in messages (standard library only)",
	},
}

func TestDeviceDependencies(t *testing.T) {
	deptest.Check(t, "github.com/fleetprov/prov/deviceclient/cmd/prov-device", deviceTargets, deviceRules)
}

// The light pki packages the device links are held to the device's rule
// themselves, so that one of them cannot grow a heavy import that only
// another binary would notice: pki/stepca in particular links the standard
// library and pki, nothing of step-ca.
func TestLightPKIDependencies(t *testing.T) {
	if testing.Short() {
		t.Skip("runs go list; skipped in -short")
	}
	light := deptest.Rules{Forbidden: forbidden, Own: map[string]string{
		"pki":                "the base every binary links",
		"pki/signedimage":    "the bundle's signature and verification",
		"pki/stepca":         "the light step-ca client",
		"internal/untrusted": "how untrusted input appears in messages (standard library only)",
	}}
	for _, pkg := range []string{"pki", "pki/stepca", "pki/signedimage"} {
		for _, target := range deviceTargets {
			pkgs, err := deptest.List(deptest.Module+"/"+pkg, target)
			if err != nil {
				t.Fatal(err)
			}
			for _, v := range light.Violations(pkgs) {
				t.Errorf("%s: %s", target, v)
			}
		}
	}
}

// TestGuardDetects proves the guard can fail: the embedded CA package does
// link step-ca, and an import of core's store from the device's code, which
// nobody has written, is caught with a message that names it.
func TestGuardDetects(t *testing.T) {
	deptest.CatchesImport(t, deviceRules, "deviceclient/agent", "core/store")
	deptest.CatchesImport(t, deviceRules, "deviceclient/agent", "proxy/enroll")
	deptest.Catches(t, deptest.Module+"/pki/ca", deviceTargets[0], deviceRules, "github.com/smallstep/certificates/")
}
