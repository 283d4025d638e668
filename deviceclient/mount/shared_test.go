package mount_test

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/fleetprov/prov/core/imagebuild"
	"github.com/fleetprov/prov/deviceclient/devicetest"
	"github.com/fleetprov/prov/deviceclient/install"
	"github.com/fleetprov/prov/deviceclient/mount"
	"github.com/fleetprov/prov/deviceclient/state"
	"github.com/fleetprov/prov/internal/testenv"
)

// childEnv marks the test binary re-run in a mount namespace of its own.
const childEnv = "PROV_MOUNT_TEST_NAMESPACE"

// inSharedNamespace runs the calling test again in a new mount namespace
// whose mounts are all shared, as systemd sets them up on a booted system
// (the copies of the machine's mounts are first cut off from the machine's
// peer groups, so nothing leaks out). It reports whether this is the child,
// which runs the test body; the parent checks the child passed.
func inSharedNamespace(t *testing.T) bool {
	t.Helper()
	testenv.Root(t, "mount namespaces, loop, squashfs and overlay mounts")
	if os.Getenv(childEnv) == t.Name() {
		// Go's exec made every mount private when it unshared; share them
		// again, within this namespace only.
		if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_SHARED, ""); err != nil {
			t.Fatalf("make / rshared: %v", err)
		}
		return true
	}
	cmd := exec.Command(os.Args[0], "-test.run=^"+t.Name()+"$", "-test.v", "-test.count=1")
	cmd.Env = append(os.Environ(), childEnv+"="+t.Name())
	cmd.SysProcAttr = &syscall.SysProcAttr{Unshareflags: syscall.CLONE_NEWNS}
	out, err := cmd.CombinedOutput()
	if err != nil || !bytes.Contains(out, []byte("--- PASS: "+t.Name())) {
		t.Fatalf("in a mount namespace with shared propagation: %v\n%s", err, out)
	}
	t.Logf("in a mount namespace with shared propagation:\n%s", out)
	return false
}

// propagation is the optional fields of the mountinfo line of the mount at
// dir ("shared:N", "master:N"), or "private".
func propagation(t *testing.T, dir string) string {
	t.Helper()
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	tags := "not a mount point"
	for _, l := range strings.Split(string(data), "\n") {
		f := strings.Fields(l)
		if len(f) < 7 || f[4] != dir {
			continue
		}
		tags = "private"
		var opt []string
		for _, x := range f[6:] {
			if x == "-" {
				break
			}
			opt = append(opt, x)
		}
		if len(opt) > 0 {
			tags = strings.Join(opt, " ")
		}
	}
	return tags
}

// Under shared propagation, as on a booted system: five swaps in a row
// replace the overlay on the target each time (one mount there, the base
// never stacks), a file set in one generation and unset in the next
// disappears, and a peer of the target's parent (as a service's mount
// namespace is) sees every new overlay.
func TestSwapsUnderSharedPropagation(t *testing.T) {
	if !inSharedNamespace(t) {
		return
	}
	r := newRig(t)
	parent := filepath.Dir(r.layout.Target)
	// A bind of the rig's directory joins the peer group of the (shared)
	// mount it is on, as a service's namespace shares / under systemd.
	peer := t.TempDir()
	if err := unix.Mount(parent, peer, "", unix.MS_BIND, ""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = mount.Unmount(r.layout)
		_ = unix.Unmount(peer, unix.MNT_DETACH)
	})
	if p := propagation(t, peer); !strings.HasPrefix(p, "shared:") {
		t.Fatalf("the peer is %s, not shared", p)
	}
	for gen := uint64(1); gen <= 6; gen++ {
		rec := devicetest.Record(serial, gen)
		if gen%2 == 1 {
			rec.Data["/etc/prov/data/odd"] = "yes\n"
		}
		in := r.installRecord(t, rec)
		if _, err := mount.Mount(r.layout, in); err != nil {
			t.Fatalf("generation %d: %v\n%s", gen, err, mountsUnder(t, parent))
		}
		want := fmt.Sprintf("dev-%s-g%d", serial, gen)
		if got := r.read(t, "hostname"); got != want {
			t.Fatalf("generation %d: hostname %q", gen, got)
		}
		if b, err := os.ReadFile(filepath.Join(peer, "etc", "hostname")); err != nil || strings.TrimSpace(string(b)) != want {
			t.Fatalf("generation %d: the peer sees hostname %q (%v)", gen, b, err)
		}
		_, err := os.Stat(filepath.Join(r.layout.Target, "prov", "data", "odd"))
		if odd := gen%2 == 1; odd != (err == nil) {
			t.Fatalf("generation %d: prov/data/odd exists %v", gen, err == nil)
		}
		if got := r.read(t, "passwd"); !strings.HasPrefix(got, "root:x:0:0") {
			t.Fatalf("generation %d: the rootfs's passwd: %q", gen, got)
		}
		mounts := mountsUnder(t, parent)
		if n := countAt(mounts, r.layout.Target); n != 1 {
			t.Fatalf("generation %d: %d mounts on the target:\n%s", gen, n, mounts)
		}
		base := filepath.Join(r.layout.RunDir, "base")
		if n := countAt(mountsUnder(t, filepath.Dir(base)), base); n != 1 {
			t.Fatalf("generation %d: %d mounts on base (overlays propagated onto it)", gen, n)
		}
		if b, err := os.ReadFile(filepath.Join(base, "hostname")); err != nil || strings.TrimSpace(string(b)) != "rootfs-default" {
			t.Fatalf("generation %d: base shows %q, not the rootfs's own /etc", gen, b)
		}
		if images := countUnder(mountsUnder(t, r.layout.RunDir), filepath.Join(r.layout.RunDir, "images")); images != 1 {
			t.Fatalf("generation %d: %d images mounted", gen, images)
		}
	}
}

// A swap whose move fails puts the previous image's overlay back: the
// target keeps it, the record still names it, and the error says so.
func TestFailedSwapKeepsThePreviousImage(t *testing.T) {
	if !inSharedNamespace(t) {
		return
	}
	r := newRig(t)
	in1 := r.install(t, 1)
	if _, err := mount.Mount(r.layout, in1); err != nil {
		t.Fatal(err)
	}
	in2 := r.install(t, 2)
	// The first move fails as it did inside a service's namespace, where
	// systemd had made the staging mount shared; the second (putting
	// generation 1 back) finds it private again.
	moves := 0
	restore := mount.SetBeforeMove(func() {
		moves++
		flag := uintptr(unix.MS_SHARED)
		if moves > 1 {
			flag = unix.MS_PRIVATE
		}
		if err := unix.Mount("", r.layout.RunDir, "", flag, ""); err != nil {
			t.Errorf("propagation of the run directory: %v", err)
		}
	})
	_, err := mount.Mount(r.layout, in2)
	restore()
	if err == nil || !strings.Contains(err.Error(), "generation 1 is mounted again") {
		t.Fatalf("failed swap: %v", err)
	}
	if got := r.read(t, "hostname"); got != "dev-"+serial+"-g1" {
		t.Fatalf("after a failed swap the target shows %q", got)
	}
	if rec, err := mount.Current(r.layout); err != nil || rec == nil || rec.Generation != 1 {
		t.Fatalf("record after a failed swap: %+v %v", rec, err)
	}
	// And the next try works.
	if _, err := mount.Mount(r.layout, in2); err != nil {
		t.Fatal(err)
	}
	if got := r.read(t, "hostname"); got != "dev-"+serial+"-g2" {
		t.Fatalf("after the retry: %q", got)
	}
	if n := countUnder(mountsUnder(t, r.layout.RunDir), filepath.Join(r.layout.RunDir, "images")); n != 1 {
		t.Fatalf("%d images mounted after the retry", n)
	}
}

func (r *rig) installRecord(t *testing.T, rec *imagebuild.Record) *install.Installed {
	t.Helper()
	if _, err := install.Install(r.st, bytes.NewReader(r.f.Bundle(t, rec)), r.opts); err != nil {
		t.Fatal(err)
	}
	cur, _, err := r.st.Pointer(state.Current)
	if err != nil {
		t.Fatal(err)
	}
	in, err := install.Verify(cur, r.opts)
	if err != nil {
		t.Fatal(err)
	}
	return in
}

// countAt counts the mountinfo lines whose mount point is dir.
func countAt(mounts, dir string) int {
	n := 0
	for _, l := range strings.Split(mounts, "\n") {
		if f := strings.Fields(l); len(f) > 4 && f[4] == dir {
			n++
		}
	}
	return n
}

// countUnder counts the mountinfo lines whose mount point is below dir.
func countUnder(mounts, dir string) int {
	n := 0
	for _, l := range strings.Split(mounts, "\n") {
		if f := strings.Fields(l); len(f) > 4 && strings.HasPrefix(f[4], dir+"/") {
			n++
		}
	}
	return n
}
