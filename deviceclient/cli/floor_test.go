package cli_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fleetprov/prov/deviceclient/cli"
	"github.com/fleetprov/prov/deviceclient/devicetest"
	"github.com/fleetprov/prov/deviceclient/state"
	"github.com/fleetprov/prov/internal/buildinfo"
)

// TestVerifyUsesBuildTime: prov-device verify on a board in 1970, with
// --clock-floor unset, verifies at no earlier than the binary's build time
// and, given --state, the device's floor. The signer's certificate is
// valid from an hour ago for a day: a build time now accepts the bundle;
// one after the certificate expired refuses it, as does a device floor
// there. (Without either, the signer's chain alone makes the bundle
// acceptable: a board with no floor cannot tell it is old.)
func TestVerifyUsesBuildTime(t *testing.T) {
	f := devicetest.New(t)
	dir := t.TempDir()
	bundle := filepath.Join(dir, "bundle")
	if err := os.WriteFile(bundle, f.Bundle(t, devicetest.Record("1a2b3c4d5e", 1)), 0o600); err != nil {
		t.Fatal(err)
	}
	cli.SetClock(t, func() time.Time { return time.Unix(0, 0) })
	old := buildinfo.CommitTime
	t.Cleanup(func() { buildinfo.CommitTime = old })
	stamp := func(at time.Time) string {
		if at.IsZero() {
			return ""
		}
		return at.Format(time.RFC3339)
	}
	expired := time.Now().Add(48 * time.Hour)
	stateAt := func(floor string) string {
		st, err := state.Open(filepath.Join(t.TempDir(), "state"))
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = st.Close() }()
		if err := st.WriteFile(state.FloorFile, []byte(floor), 0o644); err != nil {
			t.Fatal(err)
		}
		return st.Path
	}
	for _, tc := range []struct {
		name   string
		built  time.Time
		state  string // --state, if any
		code   int
		stderr string
	}{
		{"built now", time.Now(), "", cli.ExitOK, ""},
		{"built after the signer expired", expired, "", cli.ExitRefused, "expired"},
		{"no build time", time.Time{}, "", cli.ExitOK, ""},
		{"device floor after the signer expired", time.Now(), stateAt(`{"floor": "` + stamp(expired) + `"}`), cli.ExitRefused, "expired"},
		{"corrupt device floor: a warning", time.Now(), stateAt("{"), cli.ExitOK, "clock floor file unreadable"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			buildinfo.CommitTime = stamp(tc.built)
			args := []string{"verify", "--bundle", bundle, "--root", f.RootFile, "--serial", "1a2b3c4d5e"}
			if tc.state != "" {
				args = append(args, "--state", tc.state)
			}
			code, stdout, stderr := run(args...)
			if code != tc.code || !strings.Contains(stderr, tc.stderr) {
				t.Fatalf("exit %d (want %d), stderr lacks %q:\n%s%s", code, tc.code, tc.stderr, stdout, stderr)
			}
		})
	}
}
