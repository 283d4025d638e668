package main

import (
	"maps"
	"testing"

	"github.com/fleetprov/prov/internal/deptest"
)

// coreRules: core talks to step-ca over HTTP (pki/stepca: revoke, CRL), so
// it links nothing of step-ca's server, its databases or its KMS code, and
// nothing of the PKI directory's tooling. The one exception is pgx, the
// PostgreSQL driver: step-ca's nosql links it, and so does core's own
// registry engine on PostgreSQL (core/store/postgres); step-ca's nosql
// itself stays forbidden.
var coreRules = deptest.Rules{
	Forbidden: deptest.Join(withoutPgx(deptest.StepCA), map[string]string{
		deptest.Module + "/pki/ca":         "embeds step-ca's server and authority; core revokes and reads the CRL with pki/stepca",
		deptest.Module + "/pki/deployment": "the PKI directory and step-ca's configuration (links step-ca's authority/config); provisioner names are in pki/stepca",
	}),
	Own: map[string]string{
		"core/...":            "core's own code",
		"pki":                 "identities, the trust bundle, mTLS configurations",
		"pki/signedimage":     "signs the bundles",
		"pki/stepca":          "revokes at step-ca and fetches its CRL",
		"pki/token":           "revoke tokens of core's revoke-only provisioner",
		"internal/cmdline":    "the commands' flag parsing",
		"internal/serve":      "the service scaffolding shared with the proxy: config blocks, identity, the HTTPS runner",
		"internal/httpapi":    "the HTTP edge shared with the proxy: the typed error and the one error body",
		"internal/untrusted":  "how untrusted input appears in messages",
		"internal/atomicfile": "the admin's backup file and core's renewed certificates, written atomically",
		"internal/renewal":    "core renews its own TLS and signer certificates at step-ca",
	},
}

// withoutPgx is m without the PostgreSQL driver.
func withoutPgx(m map[string]string) map[string]string {
	out := maps.Clone(m)
	delete(out, "github.com/jackc/pgx")
	return out
}

func TestCoreDependencies(t *testing.T) {
	deptest.Check(t, deptest.Module+"/core/cmd/prov-core", deptest.Host, coreRules)
}

// TestGuardDetects proves the guard can fail: pki/ca links step-ca, and
// imports of the proxy's or the device's internals, which nobody has
// written, are caught.
func TestGuardDetects(t *testing.T) {
	deptest.CatchesImport(t, coreRules, "core/service", "proxy/enroll")
	deptest.CatchesImport(t, coreRules, "core/server", "deviceclient/state")
	deptest.CatchesImport(t, coreRules, "core/service", "pki/deployment")
	deptest.Catches(t, deptest.Module+"/pki/ca", deptest.Host[0], coreRules, "github.com/smallstep/certificates/")
}
