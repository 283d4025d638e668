package main

import (
	"testing"

	"github.com/fleetprov/prov/internal/deptest"
)

// pkiRules: prov-pki is the one binary that embeds step-ca (prov-pki ca,
// and the in-process authority of init), so step-ca is not forbidden here;
// what it must not link is the services' code.
var pkiRules = deptest.Rules{
	Forbidden: map[string]string{
		deptest.Module + "/core":         "core's code; prov-pki only writes the identities core uses",
		deptest.Module + "/proxy":        "the proxy's code; prov-pki only writes its provisioner and identity",
		deptest.Module + "/deviceclient": "the device's code",
	},
	Own: map[string]string{
		"pki":                 "identities and the trust bundle",
		"pki/ca":              "step-ca embedded: prov-pki ca, and the authority init signs with",
		"pki/deployment":      "the PKI directory: layout, init, issuing identities",
		"pki/cli":             "the prov-pki command",
		"pki/cmd/prov-pki":    "the binary's main",
		"pki/stepca":          "issue and revoke through the running CA",
		"pki/token":           "the admin provisioner's tokens",
		"internal/cmdline":    "the commands' flag parsing",
		"internal/atomicfile": "every file of the PKI directory is written atomically",
		"internal/untrusted":  "how untrusted input appears in messages",
	},
}

func TestPKIDependencies(t *testing.T) {
	deptest.Check(t, deptest.Module+"/pki/cmd/prov-pki", deptest.Host, pkiRules)
}

// TestGuardDetects proves the guard can fail: core's command links core,
// and an import of core's store from prov-pki's code, which nobody has
// written, is caught.
func TestGuardDetects(t *testing.T) {
	deptest.CatchesImport(t, pkiRules, "pki/cli", "core/store")
	deptest.CatchesImport(t, pkiRules, "pki/cli", "deviceclient/state")
	deptest.Catches(t, deptest.Module+"/core/cmd/prov-core", deptest.Host[0], pkiRules, deptest.Module+"/core/")
}
