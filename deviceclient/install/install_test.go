package install_test

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/fleetprov/prov/core/contract/imagespec"
	"github.com/fleetprov/prov/deviceclient/devicetest"
	"github.com/fleetprov/prov/deviceclient/install"
	"github.com/fleetprov/prov/deviceclient/mount"
	"github.com/fleetprov/prov/deviceclient/state"
	"github.com/fleetprov/prov/pki"
	"github.com/fleetprov/prov/pki/signedimage"
)

const serial = "1a2b3c4d5e"

func opts(f *devicetest.Fleet) install.Options {
	return install.Options{Roots: f.Roots, Serial: serial, Rules: imagespec.DefaultRules()}
}

func open(t testing.TB, dir string) *state.Dir {
	t.Helper()
	st, err := state.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	return st
}

func current(t *testing.T, st *state.Dir) (string, uint64) {
	t.Helper()
	img, ok, err := st.Pointer(state.Current)
	if err != nil || !ok {
		t.Fatalf("current: %v %v", ok, err)
	}
	hw, err := st.HighWater()
	if err != nil {
		t.Fatal(err)
	}
	return img.Name, hw.Generation
}

func images(t *testing.T, st *state.Dir) []string {
	t.Helper()
	entries, err := os.ReadDir(st.File(state.ImagesDir))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

func TestInstallKeepsCurrentAndPrevious(t *testing.T) {
	f := devicetest.New(t)
	st := open(t, t.TempDir())
	var names []string
	for gen := uint64(1); gen <= 4; gen++ {
		res, err := install.Install(st, bytes.NewReader(f.Bundle(t, devicetest.Record(serial, gen))), opts(f))
		if err != nil || !res.Changed || res.Generation != gen {
			t.Fatalf("generation %d: %+v %v", gen, res, err)
		}
		names = append(names, res.Name)
		if name, hw := current(t, st); name != res.Name || hw != gen {
			t.Fatalf("generation %d: current %s, high-water %d", gen, name, hw)
		}
	}
	prev, _, _ := st.Pointer(state.Previous)
	if prev.Name != names[2] {
		t.Fatalf("previous is %s, want %s", prev.Name, names[2])
	}
	if got := images(t, st); len(got) != 2 {
		t.Fatalf("images kept: %v", got)
	}
	// The same bundle again changes nothing.
	res, err := install.Install(st, bytes.NewReader(f.Bundle(t, devicetest.Record(serial, 4))), opts(f))
	if err != nil {
		t.Fatal(err)
	}
	if res.Changed || res.Name != names[3] {
		t.Fatalf("reinstall: %+v", res)
	}
}

// endless is a body that never ends.
type endless struct{}

func (endless) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = 'A'
	}
	return len(p), nil
}

func TestRefusedBundlesChangeNothing(t *testing.T) {
	f := devicetest.New(t)
	other := devicetest.New(t)
	st := open(t, t.TempDir())
	good := f.Bundle(t, devicetest.Record(serial, 5))
	if _, err := install.Install(st, bytes.NewReader(good), opts(f)); err != nil {
		t.Fatal(err)
	}
	before, _ := current(t, st)
	tampered := append([]byte{}, good...)
	tampered[len(tampered)-200] ^= 1
	oldGen := f.Bundle(t, devicetest.Record(serial, 4))
	for _, tc := range []struct {
		name string
		body io.Reader
		want error
	}{
		{"rollback", bytes.NewReader(oldGen), signedimage.ErrRollback},
		{"tampered", bytes.NewReader(tampered), signedimage.ErrDigestMismatch},
		{"another device", bytes.NewReader(f.Bundle(t, devicetest.Record("0f0e0d0c0b", 6))), signedimage.ErrWrongDevice},
		{"another deployment", bytes.NewReader(other.Bundle(t, devicetest.Record(serial, 6))), signedimage.ErrUntrustedSigner},
		{"truncated", bytes.NewReader(good[:len(good)-10]), signedimage.ErrTruncated},
		{"endless", io.MultiReader(bytes.NewReader(f.Bundle(t, devicetest.Record(serial, 6))), endless{}), signedimage.ErrTooLarge},
		{"garbage", endless{}, nil},
		{"empty", bytes.NewReader(nil), nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := install.Install(st, tc.body, opts(f))
			if !errors.Is(err, install.ErrRefused) || (tc.want != nil && !errors.Is(err, tc.want)) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
			// A rollback is called one, with the mark it fell below.
			if tc.name == "rollback" && !strings.Contains(err.Error(), "rollback (this device has accepted generation 5") {
				t.Fatalf("a rollback reported as %q", err)
			}
			if name, hw := current(t, st); name != before || hw != 5 {
				t.Fatalf("after a refusal: current %s, high-water %d", name, hw)
			}
			if got := images(t, st); len(got) != 1 {
				t.Fatalf("a refused bundle left files: %v", got)
			}
		})
	}
}

// A board without a real-time clock boots in 1970: the bundle still
// verifies, at the binary's build time, the last accepted issue time, or
// the signer's own issue time (its chain proves the time is at least
// that); the floor rises and is kept in the state directory. A floor past
// the signer's expiry refuses it, 1970 or not.
func TestClockIn1970(t *testing.T) {
	f := devicetest.New(t)
	st := open(t, t.TempDir())
	o := opts(f)
	o.Now = func() time.Time { return time.Unix(0, 0) }
	o.Floor = pki.NewFloor(time.Now().Add(48*time.Hour), nil) // built after the signer's certificate expired
	if _, err := install.Install(st, bytes.NewReader(f.Bundle(t, devicetest.Record(serial, 1))), o); !errors.Is(err, install.ErrRefused) || !errors.Is(err, signedimage.ErrUntrustedSigner) {
		t.Fatalf("1970 with a floor past the signer's expiry: %v", err)
	}
	o.Floor = pki.NewFloor(time.Now().Add(-time.Minute), nil)
	if _, err := install.Install(st, bytes.NewReader(f.Bundle(t, devicetest.Record(serial, 1))), o); err != nil {
		t.Fatalf("1970 with the build time as floor: %v", err)
	}
	// From now on the last issue time is a floor too.
	o.Floor = nil
	rec := devicetest.Record(serial, 2)
	if _, err := install.Install(st, bytes.NewReader(f.Bundle(t, rec)), o); err != nil {
		t.Fatalf("1970 with the high-water mark as floor: %v", err)
	}
	if floor := st.ClockFloor(time.Time{}, nil).Time(); !floor.Equal(rec.IssuedAt) {
		t.Fatalf("floor %v; want the bundle's issue time %v", floor, rec.IssuedAt)
	}
	// A board with no floor at all: the signer's chain is enough, and what
	// the bundle proves is written down.
	fresh := open(t, t.TempDir())
	if _, err := install.Install(fresh, bytes.NewReader(f.Bundle(t, rec)), o); err != nil {
		t.Fatalf("1970 without a floor: %v", err)
	}
	if floor, err := fresh.Floor(); err != nil || !floor.Equal(rec.IssuedAt) {
		t.Fatalf("floor kept: %v %v; want %v", floor, err, rec.IssuedAt)
	}
}

var steps = []string{"written", "synced", "renamed", "previous", "current", "highwater", "pruned"}

// TestCrashAtEveryStep kills a process installing generation 2 over
// generation 1 at each step: afterwards exactly one of them is current and
// verifies, the high-water mark matches it after recovery, and nothing
// else is left behind.
func TestCrashAtEveryStep(t *testing.T) {
	f := devicetest.New(t)
	for _, step := range steps {
		t.Run(step, func(t *testing.T) {
			dir := t.TempDir()
			st := open(t, dir)
			r1, err := install.Install(st, bytes.NewReader(f.Bundle(t, devicetest.Record(serial, 1))), opts(f))
			if err != nil {
				t.Fatal(err)
			}
			_ = st.Close()
			bundle := filepath.Join(t.TempDir(), "g2")
			if err := os.WriteFile(bundle, f.Bundle(t, devicetest.Record(serial, 2)), 0o600); err != nil {
				t.Fatal(err)
			}
			cmd := exec.Command(os.Args[0], "-test.run=^TestHelperInstall$") //nolint:gosec // the test binary
			cmd.Env = append(os.Environ(), "INSTALL_HELPER=1", "INSTALL_STATE="+dir, "INSTALL_BUNDLE="+bundle,
				"INSTALL_ROOT="+f.RootFile, "INSTALL_KILL_AT="+step)
			out, err := cmd.CombinedOutput()
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
				t.Fatalf("helper was not killed at %s: %v\n%s", step, err, out)
			}
			st = open(t, dir)
			in, fb, err := install.Recover(st, opts(f))
			if err != nil || in == nil || fb != nil {
				t.Fatalf("recover: %v", err)
			}
			name, hw := current(t, st)
			afterSwitch := step == "current" || step == "highwater" || step == "pruned"
			switch {
			case afterSwitch && in.Generation != 2, !afterSwitch && (in.Generation != 1 || name != r1.Name):
				t.Fatalf("killed at %s: generation %d (%s) is current", step, in.Generation, name)
			case hw != in.Generation:
				t.Fatalf("killed at %s: high-water %d for current generation %d", step, hw, in.Generation)
			}
			for _, n := range images(t, st) {
				if strings.HasSuffix(n, ".tmp") {
					t.Fatalf("killed at %s: %s left", step, n)
				}
			}
			// The current image mounts (as root).
			if os.Geteuid() == 0 {
				l := mount.Layout{Target: filepath.Join(t.TempDir(), "etc"), RunDir: filepath.Join(t.TempDir(), "run")}
				if err := os.MkdirAll(l.Target, 0o755); err != nil {
					t.Fatal(err)
				}
				if _, err := mount.Mount(l, in); err != nil {
					t.Fatalf("killed at %s: the current image does not mount: %v", step, err)
				}
				host, err := os.ReadFile(filepath.Join(l.Target, "hostname"))
				if err != nil || !strings.Contains(string(host), fmt.Sprintf("-g%d", in.Generation)) {
					t.Fatalf("killed at %s: mounted hostname %q %v", step, host, err)
				}
				if err := mount.Unmount(l); err != nil {
					t.Fatal(err)
				}
			}
			// And the next install proceeds.
			if _, err := install.Install(st, bytes.NewReader(f.Bundle(t, devicetest.Record(serial, 3))), opts(f)); err != nil {
				t.Fatalf("install after recovery: %v", err)
			}
		})
	}
}

// TestHelperInstall is the process TestCrashAtEveryStep kills.
func TestHelperInstall(t *testing.T) {
	if os.Getenv("INSTALL_HELPER") != "1" {
		t.Skip("helper process for TestCrashAtEveryStep")
	}
	roots, err := os.ReadFile(os.Getenv("INSTALL_ROOT"))
	if err != nil {
		t.Fatal(err)
	}
	f := &devicetest.Fleet{}
	if f.Roots, err = parseRoots(roots); err != nil {
		t.Fatal(err)
	}
	st, err := state.Open(os.Getenv("INSTALL_STATE"))
	if err != nil {
		t.Fatal(err)
	}
	body, err := os.Open(os.Getenv("INSTALL_BUNDLE"))
	if err != nil {
		t.Fatal(err)
	}
	o := opts(f)
	kill := os.Getenv("INSTALL_KILL_AT")
	o.Failpoint = func(step string) {
		if step == kill {
			_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
			select {}
		}
	}
	_, err = install.Install(st, body, o)
	t.Fatalf("install returned (%v) without being killed at %s", err, kill)
}

func parseRoots(pem []byte) (*pki.TrustBundle, error) { return pki.ParseTrustBundle(pem) }

// A current bundle changed on the card: Recover makes the previous image
// current, says so, and keeps the high-water mark; with no previous image
// it refuses.
func TestRecoverFallsBackToThePreviousImage(t *testing.T) {
	f := devicetest.New(t)
	st := open(t, t.TempDir())
	var names []string
	for gen := uint64(1); gen <= 2; gen++ {
		res, err := install.Install(st, bytes.NewReader(f.Bundle(t, devicetest.Record(serial, gen))), opts(f))
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, res.Name)
	}
	flip := func(name string) {
		p := filepath.Join(st.File(state.ImagesDir), name)
		data, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		data[len(data)-10] ^= 1
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	flip(names[1])
	in, fb, err := install.Recover(st, opts(f))
	if err != nil || in == nil || in.Generation != 1 || fb == nil || fb.Refused != names[1] || !errors.Is(fb.Reason, install.ErrRefused) {
		t.Fatalf("recover: %+v %+v %v", in, fb, err)
	}
	if !strings.Contains(fb.String(), names[1]) || !strings.Contains(fb.String(), "generation 1") {
		t.Errorf("fallback says %q", fb)
	}
	if name, hw := current(t, st); name != names[0] || hw != 2 {
		t.Fatalf("after the fallback: current %s, high-water %d (the mark must stay)", name, hw)
	}
	// The current generation fetched again replaces the changed file.
	res, err := install.Install(st, bytes.NewReader(f.Bundle(t, devicetest.Record(serial, 2))), opts(f))
	if err != nil || !res.Changed || res.Generation != 2 {
		t.Fatalf("generation 2 again: %+v %v", res, err)
	}
	if _, fb, err := install.Recover(st, opts(f)); err != nil || fb != nil {
		t.Fatalf("recover after the fetch: %+v %v", fb, err)
	}
	// Nothing to fall back to: refused. (The bundle fetched again may
	// have another name: its issuedAt, in its image, is the second it was
	// made in.)
	flip(res.Name)
	if err := st.SetPointer(state.Previous, res.Name); err != nil {
		t.Fatal(err)
	}
	if _, _, err := install.Recover(st, opts(f)); !errors.Is(err, install.ErrRefused) {
		t.Fatalf("no good image left: %v", err)
	}
}
