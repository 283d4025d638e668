package e2e_test

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/fleetprov/prov/internal/testenv"
	"github.com/fleetprov/prov/internal/testenv/pgtest"
	"github.com/fleetprov/prov/pki/ca/catest"
)

// The four binaries, built once for the package's tests.
var (
	buildOnce sync.Once
	binDir    string
	buildErr  error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		_ = os.RemoveAll(binDir)
	}
	os.Exit(code)
}

// binaries returns the directory holding prov-pki, prov-core, prov-proxy
// and prov-device, built by make build itself (its flags stamp the build
// time).
func binaries(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		if binDir, buildErr = os.MkdirTemp("", "prov-e2e-bin-"); buildErr != nil {
			return
		}
		cmd := exec.Command("make", "--no-print-directory", "-C", repoRoot(t), "build", "BIN="+binDir)
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("make build: %w\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binDir
}

// repoRoot is where the scripts are.
func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	return root
}

// TestDemo runs make demo's script on freshly built binaries: every step
// passes (as root; without root the mounts are reported as skipped), and
// a board enrolls with its key in a TPM (swtpm) beside the others.
func TestDemo(t *testing.T) {
	testenv.Tool(t, "curl", "apt-get install curl")
	testenv.Tool(t, "openssl", "apt-get install openssl")
	cmd := exec.Command("bash", filepath.Join(repoRoot(t), "scripts", "demo"))
	cmd.Env = append(os.Environ(), "BIN="+binaries(t), "TMPDIR="+t.TempDir())
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("demo: %v\n%s", err, out)
	}
	_, noTPM := exec.LookPath("swtpm")
	want := "Every step passed."
	if os.Geteuid() != 0 || noTPM != nil {
		want = "skipped"
	}
	if !strings.Contains(string(out), want) {
		t.Fatalf("demo output lacks %q:\n%s", want, out)
	}
	if noTPM != nil {
		testenv.Missing(t, "the demo skipped its TPM board: install Debian's swtpm and swtpm-tools")
	}
	// The board with its key in a TPM: the certificate's policy and core's
	// view name its endorsement key (the demo checks they are the same).
	for _, want := range []string{"Explicit Text: TPM-resident key; endorsement key SHA-256 ", "key: TPM (endorsement key sha256 ", "key: software"} {
		if !strings.Contains(string(out), want) {
			t.Fatalf("demo output lacks %q:\n%s", want, out)
		}
	}
}

// TestDemoHA runs make demo-ha's script on freshly built binaries: a
// private PostgreSQL cluster, two step-ca instances on one database, three
// core replicas behind HAProxy on docs/haproxy.md's file, Mosquitto on
// docs/mosquitto.md's, two proxies on one batch; one replica SIGKILLed
// during a group change and every board at the new generation. Every step
// passes (the script checks each, and exits non-zero on the first failure).
func TestDemoHA(t *testing.T) {
	testenv.Root(t, "the demo runs PostgreSQL as the postgres user and mounts images")
	if _, err := os.Stat(filepath.Join(pgtest.BinDir, "initdb")); err != nil {
		testenv.Missing(t, "PostgreSQL 15 not found (%s/initdb); install Debian's postgresql", pgtest.BinDir)
	}
	for _, tool := range []struct{ name, hint string }{
		{"haproxy", "apt-get install haproxy"}, {"mosquitto", "apt-get install mosquitto"},
		{"psql", "apt-get install postgresql"}, {"jq", "apt-get install jq"},
		{"envsubst", "apt-get install gettext-base"}, {"curl", "apt-get install curl"},
		{"openssl", "apt-get install openssl"}, {"runuser", "apt-get install util-linux"},
	} {
		testenv.Tool(t, tool.name, tool.hint)
	}
	stepCA := catest.Binary(t)
	cmd := exec.Command("bash", filepath.Join(repoRoot(t), "scripts", "demo-ha"))
	cmd.Env = append(os.Environ(), "BIN="+binaries(t), "TMPDIR="+t.TempDir(), "STEP_CA="+stepCA, "PG_BIN="+pgtest.BinDir)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("demo-ha: %v\n%s", err, out)
	}
	for _, want := range []string{"Every step passed.", "core-2=DOWN", "603 of 603 devices at their next generation"} {
		if !strings.Contains(string(out), want) {
			t.Fatalf("demo-ha output lacks %q:\n%s", want, out)
		}
	}
}

// TestDevUp starts make up's script, runs every command it prints (but
// the daemon, which runs until Ctrl-C), and stops it with Ctrl-C.
func TestDevUp(t *testing.T) {
	testenv.Tool(t, "curl", "apt-get install curl")
	cmd := exec.Command("bash", filepath.Join(repoRoot(t), "scripts", "dev-up"))
	cmd.Env = append(os.Environ(), "BIN="+binaries(t), "TMPDIR="+t.TempDir())
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
	})
	var printed, commands []string
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		line := sc.Text()
		printed = append(printed, line)
		if strings.HasPrefix(line, "  /") {
			commands = append(commands, strings.TrimSpace(line))
		}
		if strings.Contains(line, "Ctrl-C stops everything") {
			break
		}
	}
	go func() {
		for sc.Scan() { // drain: "stopping..." at Ctrl-C
		}
		exited <- cmd.Wait()
	}()
	if len(commands) < 6 {
		t.Fatalf("dev-up printed %d commands:\n%s\n%s", len(commands), strings.Join(printed, "\n"), stderr.String())
	}
	for _, c := range commands {
		if strings.Contains(c, " run ") {
			c += " -h" // runs until Ctrl-C; check that it parses
			out, err := exec.Command("bash", "-c", c).CombinedOutput()
			if code := exitCode(err); code != 0 || !strings.Contains(string(out), "usage") {
				t.Fatalf("%s: exit %d\n%s", c, code, out)
			}
			continue
		}
		out, err := exec.Command("bash", "-c", c).CombinedOutput()
		if err != nil {
			t.Fatalf("%s: %v\n%s", c, err, out)
		}
		if strings.Contains(c, " status ") && !strings.Contains(string(out), "generation   2") {
			t.Fatalf("status after the group change:\n%s", out)
		}
	}
	if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("dev-up after Ctrl-C: %v\n%s", err, stderr.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatal("dev-up did not stop on Ctrl-C")
	}
}

func exitCode(err error) int {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	if err != nil {
		return -1
	}
	return 0
}

// TestBuildStampsCommitTime: make build stamps the last commit's time into
// the binaries as their build time, the device's lowest clock floor, and
// prov-device status shows it.
func TestBuildStampsCommitTime(t *testing.T) {
	git := testenv.Tool(t, "git", "apt-get install git")
	var want time.Time
	if out, err := exec.Command(git, "-C", repoRoot(t), "log", "-1", "--format=%cI").Output(); err == nil {
		if want, err = time.Parse(time.RFC3339, strings.TrimSpace(string(out))); err != nil {
			t.Fatalf("git log: %v", err)
		}
	} // outside a git checkout make build stamps nothing
	out, err := exec.Command(filepath.Join(binaries(t), "prov-device"), "status", "--json", "--state", t.TempDir()).Output()
	if err != nil {
		t.Fatalf("status: %v", err)
	}
	var st struct {
		BuildTime, ClockFloor time.Time
	}
	if err := json.Unmarshal(out, &st); err != nil {
		t.Fatal(err)
	}
	if !st.BuildTime.Equal(want) || !st.ClockFloor.Equal(want) {
		t.Fatalf("build time %v, clock floor %v; want the last commit's, %v\n%s", st.BuildTime, st.ClockFloor, want, out)
	}
}
