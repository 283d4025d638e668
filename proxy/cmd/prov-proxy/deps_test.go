package main

import (
	"testing"

	"github.com/fleetprov/prov/internal/deptest"
)

// proxyRules: the factory appliance holds a provisioner key, so what it
// links is attack surface; it talks to step-ca over HTTP (pki/stepca: sign,
// revoke) and to core through core's published client.
var proxyRules = deptest.Rules{
	Forbidden: deptest.Join(deptest.StepCA, map[string]string{
		deptest.Module + "/pki/ca":         "embeds step-ca's server and authority; the proxy signs and revokes with pki/stepca",
		deptest.Module + "/pki/deployment": "the PKI directory and step-ca's configuration (links step-ca's authority/config); provisioner names are in pki/stepca",
		"github.com/jackc/pgx":             "the PostgreSQL driver: core's registry engine (core/store/postgres) and step-ca's nosql",
		"go.etcd.io/bbolt":                 "core's registry store; the proxy's factory record is a JSON-lines file",
	}),
	Own: map[string]string{
		"proxy/...":               "the proxy's own code",
		"core/contract/coreapi":   "core's API client: register devices, record certificates, fetch first bundles",
		"core/contract/hwid":      "the serial rule, applied before core is asked",
		"core/contract/imagespec": "the image limits the first bundle is checked against",
		"pki":                     "identities, the trust bundle, mTLS configurations",
		"pki/signedimage":         "verifies the first bundle as the device will",
		"pki/stepca":              "signs and revokes at step-ca",
		"pki/token":               "one-time tokens of the proxy's provisioner",
		"internal/cmdline":        "the commands' flag parsing",
		"internal/serve":          "the service scaffolding shared with core: config blocks, identity, the HTTPS runner",
		"internal/httpapi":        "the HTTP edge shared with core: the typed error and the one error body",
		"internal/untrusted":      "how untrusted input appears in messages and the factory record",
		"internal/renewal":        "the proxy renews its own TLS certificate at step-ca",
		"internal/atomicfile":     "the renewed certificate, written atomically over the old one",
	},
}

func TestProxyDependencies(t *testing.T) {
	deptest.Check(t, deptest.Module+"/proxy/cmd/prov-proxy", deptest.Host, proxyRules)
}

// TestGuardDetects proves the guard can fail: pki/ca links step-ca, and
// imports of core's or the device's internals, which nobody has written,
// are caught.
func TestGuardDetects(t *testing.T) {
	deptest.CatchesImport(t, proxyRules, "proxy/enroll", "core/store")
	deptest.CatchesImport(t, proxyRules, "proxy/server", "deviceclient/enroll")
	deptest.CatchesImport(t, proxyRules, "proxy/service", "pki/ca")
	deptest.Catches(t, deptest.Module+"/pki/ca", deptest.Host[0], proxyRules, "github.com/smallstep/certificates/")
}
