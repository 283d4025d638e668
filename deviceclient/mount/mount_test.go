package mount_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/fleetprov/prov/core/contract/imagespec"
	"github.com/fleetprov/prov/deviceclient/devicetest"
	"github.com/fleetprov/prov/deviceclient/install"
	"github.com/fleetprov/prov/deviceclient/mount"
	"github.com/fleetprov/prov/deviceclient/state"
	"github.com/fleetprov/prov/internal/testenv"
)

const serial = "1a2b3c4d5e"

type rig struct {
	f      *devicetest.Fleet
	st     *state.Dir
	layout mount.Layout
	opts   install.Options
}

// newRig makes a fake rootfs /etc (a hostname and a passwd file) and a
// state directory; the overlay goes over that /etc.
func newRig(t *testing.T) *rig {
	t.Helper()
	testenv.Root(t, "loop, squashfs and overlay mounts")
	dir := t.TempDir()
	etc := filepath.Join(dir, "etc")
	if err := os.MkdirAll(etc, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, content := range map[string]string{"hostname": "rootfs-default\n", "passwd": "root:x:0:0:root:/root:/bin/sh\n"} {
		if err := os.WriteFile(filepath.Join(etc, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	st, err := state.Open(filepath.Join(dir, "state"))
	if err != nil {
		t.Fatal(err)
	}
	f := devicetest.New(t)
	r := &rig{f: f, st: st, layout: mount.Layout{Target: etc, RunDir: filepath.Join(dir, "run")},
		opts: install.Options{Roots: f.Roots, Serial: serial, Rules: imagespec.DefaultRules()}}
	t.Cleanup(func() {
		if err := mount.Unmount(r.layout); err != nil {
			t.Errorf("unmount at cleanup: %v", err)
		}
		_ = st.Close()
	})
	return r
}

func (r *rig) install(t *testing.T, gen uint64) *install.Installed {
	t.Helper()
	return r.installRecord(t, devicetest.Record(serial, gen))
}

func (r *rig) read(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(r.layout.Target, name))
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

func TestMountUpdateUnmount(t *testing.T) {
	r := newRig(t)
	in := r.install(t, 1)
	rec, err := mount.Mount(r.layout, in)
	if err != nil {
		t.Fatal(err)
	}
	if rec.Generation != 1 {
		t.Fatalf("record %+v", rec)
	}
	observed(t, r.layout, in)
	// Through the overlay: the image's files win, the rootfs's others stay.
	if got := r.read(t, "hostname"); got != "dev-"+serial+"-g1" {
		t.Fatalf("hostname through the overlay: %q", got)
	}
	if got := r.read(t, "serial-number"); got != serial {
		t.Fatalf("serial-number: %q", got)
	}
	if got := r.read(t, "prov/data/generation"); got != "1" {
		t.Fatalf("data file: %q", got)
	}
	if got := r.read(t, "passwd"); !strings.HasPrefix(got, "root:x:0:0") {
		t.Fatalf("the rootfs's own passwd is hidden: %q", got)
	}
	if err := os.WriteFile(filepath.Join(r.layout.Target, "hostname"), []byte("x"), 0o644); err == nil {
		t.Fatal("the overlay is writable")
	}
	// Mounting the same image again is a no-op.
	if again, err := mount.Mount(r.layout, in); err != nil || again.MountedAt != rec.MountedAt {
		t.Fatalf("remount of the same image: %+v %v", again, err)
	}

	// An update while mounted: generation 2 replaces 1 in place, and the
	// old image is unmounted.
	in2 := r.install(t, 2)
	if _, err := mount.Mount(r.layout, in2); err != nil {
		t.Fatal(err)
	}
	if got := r.read(t, "hostname"); got != "dev-"+serial+"-g2" {
		t.Fatalf("hostname after the update: %q", got)
	}
	observed(t, r.layout, in2)
	if got := r.read(t, "passwd"); !strings.HasPrefix(got, "root:x:0:0") {
		t.Fatalf("the rootfs's passwd after the update: %q", got)
	}
	mounts := mountsUnder(t, filepath.Dir(r.layout.Target))
	n := 0
	for _, l := range strings.Split(mounts, "\n") {
		if f := strings.Fields(l); len(f) > 4 && f[4] == r.layout.Target {
			n++
		}
	}
	if n != 1 {
		t.Fatalf("%d mounts on the target after the update:\n%s", n, mounts)
	}
	if strings.Contains(mounts, strings.TrimSuffix(in.Name, ".bundle")) {
		t.Fatalf("the old image is still mounted:\n%s", mounts)
	}

	if err := mount.Unmount(r.layout); err != nil {
		t.Fatal(err)
	}
	if got := r.read(t, "hostname"); got != "rootfs-default" {
		t.Fatalf("after unmount: %q", got)
	}
	if m := mountsUnder(t, filepath.Dir(r.layout.Target)); m != "" {
		t.Fatalf("left mounted:\n%s", m)
	}
	if rec, err := mount.Current(r.layout); err != nil || rec != nil {
		t.Fatalf("current after unmount: %+v %v", rec, err)
	}
	if o, err := mount.Observe(r.layout); err != nil || o != nil {
		t.Fatalf("the kernel's view after unmount: %+v %v", o, err)
	}
}

// observed checks the kernel's view of the target: our overlay, over a
// loop device that maps exactly the verified bytes of in's bundle file.
func observed(t *testing.T, l mount.Layout, in *install.Installed) {
	t.Helper()
	o, err := mount.Observe(l)
	if err != nil || o == nil || !o.Overlay || o.BackingFile != in.Path || o.Offset != in.Offset || o.Size != in.Length || o.Deleted ||
		o.Image() != in.Name || !strings.HasPrefix(o.LoopDevice, "/dev/loop") {
		t.Fatalf("the kernel's view: %+v %v; want %s at %d+%d", o, err, in.Path, in.Offset, in.Length)
	}
}

// The bytes mounted are the bytes verified: a stored bundle changed after
// install is refused at mount, and nothing is mounted.
func TestChangedBundleIsNotMounted(t *testing.T) {
	r := newRig(t)
	r.install(t, 1)
	cur, _, _ := r.st.Pointer(state.Current)
	data, err := os.ReadFile(cur.Path)
	if err != nil {
		t.Fatal(err)
	}
	data[len(data)-50] ^= 1
	if err := os.WriteFile(cur.Path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := install.Verify(cur, r.opts); !errors.Is(err, install.ErrRefused) {
		t.Fatalf("changed bundle verified: %v", err)
	}
	if m := mountsUnder(t, filepath.Dir(r.layout.Target)); m != "" {
		t.Fatalf("mounted:\n%s", m)
	}
}

// mountsUnder lists the mountinfo lines whose mount point is below dir.
func mountsUnder(t *testing.T, dir string) string {
	t.Helper()
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, l := range strings.Split(string(data), "\n") {
		if f := strings.Fields(l); len(f) > 4 && strings.HasPrefix(f[4], dir+"/") {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// A record that names another image than the kernel maps (written by a
// mount in another mount namespace) does not make Mount skip the swap:
// the kernel's view decides.
func TestRecordThatDisagreesWithTheKernel(t *testing.T) {
	r := newRig(t)
	in1 := r.install(t, 1)
	if _, err := mount.Mount(r.layout, in1); err != nil {
		t.Fatal(err)
	}
	in2 := r.install(t, 2)
	lie := []byte(`{"target":"` + r.layout.Target + `","image":"` + in2.Name + `","generation":2}`)
	if err := os.WriteFile(filepath.Join(r.layout.RunDir, "mounted.json"), lie, 0o644); err != nil {
		t.Fatal(err)
	}
	if cur, err := mount.Current(r.layout); err != nil || cur.Image != in1.Name || cur.Generation != 1 {
		t.Fatalf("current with a lying record: %+v %v", cur, err)
	}
	if _, err := mount.Mount(r.layout, in2); err != nil {
		t.Fatal(err)
	}
	if got := r.read(t, "hostname"); got != "dev-"+serial+"-g2" {
		t.Fatalf("after mounting generation 2: %q", got)
	}
	observed(t, r.layout, in2)
}
