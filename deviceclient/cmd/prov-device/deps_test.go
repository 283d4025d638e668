package main

import (
	"os/exec"
	"strings"
	"testing"
)

// forbidden are the modules the device binary must never link: the CA, the
// HTTP router and the store are core's and the proxy's, and would bloat a
// binary that runs on a BeagleBone Black.
var forbidden = []string{
	"github.com/smallstep/certificates",
	"github.com/smallstep/nosql",
	"github.com/gorilla/mux",
	"go.etcd.io/bbolt",
}

// The device links the pki package for its trust checks, so pki is held to
// the same rule.
var devicePackages = []string{"github.com/fleetprov/prov/deviceclient/cmd/prov-device", "github.com/fleetprov/prov/pki"}

// deviceTargets are the boards' platforms (Raspberry Pi 4: arm64;
// BeagleBone Black and AI: armv7) and the build host's.
var deviceTargets = [][]string{
	{"GOOS=linux", "GOARCH=arm64"},
	{"GOOS=linux", "GOARCH=arm", "GOARM=7"},
	{"GOOS=linux", "GOARCH=amd64"},
}

func deps(t *testing.T, env []string, pkg string) []string {
	t.Helper()
	cmd := exec.Command("go", "list", "-deps", "-f", "{{.ImportPath}}", pkg)
	cmd.Env = append(cmd.Environ(), env...)
	cmd.Env = append(cmd.Env, "CGO_ENABLED=0")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list %s (%v): %v", pkg, env, err)
	}
	return strings.Fields(string(out))
}

func violations(list []string) []string {
	var bad []string
	for _, p := range list {
		for _, f := range forbidden {
			if p == f || strings.HasPrefix(p, f+"/") {
				bad = append(bad, p)
			}
		}
	}
	return bad
}

func TestDeviceDependencies(t *testing.T) {
	if testing.Short() {
		t.Skip("runs go list; skipped in -short")
	}
	for _, env := range deviceTargets {
		for _, pkg := range devicePackages {
			if bad := violations(deps(t, env, pkg)); len(bad) > 0 {
				t.Errorf("%s (%v) links forbidden packages: %v", pkg, env, bad)
			}
		}
	}
}

// TestGuardDetects proves the guard can fail: the embedded CA package does
// link step-ca and its database.
func TestGuardDetects(t *testing.T) {
	if testing.Short() {
		t.Skip("runs go list; skipped in -short")
	}
	if bad := violations(deps(t, deviceTargets[0], "github.com/fleetprov/prov/pki/ca")); len(bad) == 0 {
		t.Fatal("the guard found nothing forbidden in pki/ca, which embeds step-ca")
	}
}
