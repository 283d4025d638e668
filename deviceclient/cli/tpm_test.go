package cli_test

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/fleetprov/prov/deviceclient/cli"
	"github.com/fleetprov/prov/deviceclient/devicetest"
)

// enroll --key takes file or tpm; with --key tpm and no TPM at --tpm the
// board says so before it asks the proxy anything, and makes no key.
func TestEnrollKeyFlag(t *testing.T) {
	f := devicetest.New(t)
	state := t.TempDir()
	base := []string{"enroll", "--proxy", "https://127.0.0.1:1", "--root", f.RootFile, "--state", state, "--board", "bbb", "--hwid", "1813BBBK0301"}
	if code, _, stderr := run(append(base, "--key", "hsm")...); code != cli.ExitUsage || !strings.Contains(stderr, "--key") {
		t.Errorf("--key hsm: exit %d\n%s", code, stderr)
	}
	code, _, stderr := run(append(base, "--key", "tpm", "--tpm", "unix:"+filepath.Join(t.TempDir(), "none.sock"))...)
	if code != cli.ExitError || !strings.Contains(stderr, "no TPM") || strings.Contains(stderr, "127.0.0.1:1") {
		t.Errorf("--key tpm without a TPM: exit %d\n%s", code, stderr)
	}
	if matches, _ := filepath.Glob(filepath.Join(state, "key.*")); len(matches) != 0 {
		t.Errorf("a key was made: %v", matches)
	}
}
