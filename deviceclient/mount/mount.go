// Package mount puts the device's verified image over /etc: the image is
// loop-mounted read-only (nosuid, nodev, noexec) straight from the bundle
// file it was verified in, and its etc/ is the upper of two lower layers of
// a read-only overlay whose other layer is the rootfs's own /etc, so the
// image's files win and every other file of the rootfs stays visible.
//
// A later image is mounted and its overlay assembled beside the running one
// first; only then is the old overlay detached and the new one moved into
// place (two system calls apart), and the old image unmounted. If the move
// fails, the old image's overlay is assembled again and put back, so a
// failed swap leaves the previous image mounted.
//
// Propagation matters: systemd makes / shared, so a mount made under a
// shared mount is copied to its peers, and a mount cannot be moved out of a
// shared parent. The run directory is therefore made a private mount of its
// own, and base/ is made private after it is bound (a bind of a shared
// mount joins its peer group; it would then receive every overlay moved
// onto the target, and each new overlay would stack on the last). Only the
// overlay moved onto the target propagates, as it should: to every mount
// namespace that shares the target. The run directory (on tmpfs) holds:
//
//	base/           the rootfs's own target, bound before our first overlay
//	images/<name>/  the image mounts
//	stage/<name>/   where overlays are assembled
//	mounted.json    which image is mounted over which target
package mount

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/fleetprov/prov/deviceclient/install"
	"github.com/fleetprov/prov/internal/atomicfile"
)

// source names our overlays in /proc/self/mountinfo.
const source = "prov-device"

// beforeMove runs before every move onto the target: a fault-injection
// seam for tests (export_test.go).
var beforeMove = func() {}

// Layout says where to mount.
type Layout struct {
	Target string // the directory the image's etc/ covers: /etc on a device
	RunDir string // on tmpfs: /run/prov-device
}

// Record is what is mounted.
type Record struct {
	Target     string    `json:"target"`
	Image      string    `json:"image"` // bundle file name
	Generation uint64    `json:"generation"`
	Serial     string    `json:"serial"`
	MountedAt  time.Time `json:"mountedAt"`
}

func (l Layout) file(parts ...string) string {
	return filepath.Join(append([]string{l.RunDir}, parts...)...)
}

// check refuses paths overlayfs options cannot carry.
func (l Layout) check() error {
	for _, p := range []string{l.Target, l.RunDir} {
		if !filepath.IsAbs(p) || filepath.Clean(p) != p || strings.ContainsAny(p, ",:\\\n") {
			return fmt.Errorf("mount: %q must be a clean absolute path without , : or \\", p)
		}
	}
	return nil
}

// ReadRecord reads what the last mount recorded, whatever the kernel has
// mounted since; nil if nothing is recorded.
func ReadRecord(l Layout) (*Record, error) {
	data, err := os.ReadFile(l.file("mounted.json"))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var r Record
	if err := json.Unmarshal(data, &r); err != nil {
		return nil, fmt.Errorf("%s: %w", l.file("mounted.json"), err)
	}
	return &r, nil
}

// Current is what is mounted on the target as the kernel has it: nil if
// not our overlay (as after a reboot with a persistent run directory). The
// record of the last mount says when; if it names another image than the
// kernel maps (a mount made in another mount namespace wrote it), the
// kernel wins.
func Current(l Layout) (*Record, error) {
	r, err := ReadRecord(l)
	if err != nil {
		return nil, err
	}
	k, err := Observe(l)
	if err != nil {
		return nil, err
	}
	if k == nil || !k.Overlay {
		return nil, nil
	}
	if r != nil && r.Target == l.Target && r.Image == k.Image() {
		return r, nil
	}
	name := k.Image()
	gen, _ := strconv.ParseUint(strings.SplitN(name, "-", 2)[0], 10, 64)
	return &Record{Target: l.Target, Image: name, Generation: gen}, nil
}

// Mount makes in the image over the target. Mounting the image that is
// mounted already does nothing.
func Mount(l Layout, in *install.Installed) (*Record, error) {
	if err := l.check(); err != nil {
		return nil, err
	}
	if err := ensurePrivate(l.RunDir); err != nil {
		return nil, err
	}
	old, err := Current(l)
	if err != nil {
		return nil, err
	}
	if old != nil && old.Image == in.Name {
		return old, nil
	}
	if err := ensureBase(l, old != nil); err != nil {
		return nil, err
	}
	name := strings.TrimSuffix(in.Name, ".bundle")
	imgDir := l.file("images", name)
	if err := mountImage(in, imgDir); err != nil {
		return nil, err
	}
	staged, err := assemble(l, name)
	if err != nil {
		_ = unix.Unmount(imgDir, unix.MNT_DETACH)
		return nil, err
	}
	if err := swap(l, staged, old); err != nil {
		_ = unix.Unmount(staged, unix.MNT_DETACH)
		_ = unix.Unmount(imgDir, unix.MNT_DETACH)
		return nil, err
	}
	if old != nil && old.Image != "" {
		oldDir := l.file("images", strings.TrimSuffix(old.Image, ".bundle"))
		_ = unix.Unmount(oldDir, unix.MNT_DETACH)
		_ = os.Remove(oldDir)
	}
	rec := &Record{Target: l.Target, Image: in.Name, Generation: in.Generation, Serial: in.Serial, MountedAt: time.Now().UTC()}
	data, err := json.Marshal(rec)
	if err != nil {
		return nil, err
	}
	if err := atomicfile.WriteFile(l.file("mounted.json"), data, 0o644); err != nil {
		return nil, err
	}
	return rec, nil
}

// assemble mounts the overlay of the image mounted at images/<name> over
// base/ at stage/<name>, and returns that path.
func assemble(l Layout, name string) (string, error) {
	staged := l.file("stage", name)
	if err := os.MkdirAll(staged, 0o700); err != nil {
		return "", err
	}
	if m, err := topMount(staged); err != nil {
		return "", err
	} else if m != nil {
		_ = unix.Unmount(staged, unix.MNT_DETACH) // left by a crash
	}
	opts := "lowerdir=" + filepath.Join(l.file("images", name), "etc") + ":" + l.file("base")
	if err := unix.Mount(source, staged, "overlay", unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV, opts); err != nil {
		return "", fmt.Errorf("mount overlay (%s): %w", opts, err)
	}
	return staged, nil
}

// swap retires the old overlay and moves the staged one onto the target.
// If the move fails, the old image's overlay is assembled again and put
// back, so the target keeps the previous image.
func swap(l Layout, staged string, old *Record) error {
	if old != nil {
		if err := unix.Unmount(l.Target, unix.MNT_DETACH); err != nil {
			return fmt.Errorf("detach the old overlay from %s: %w", l.Target, err)
		}
	}
	beforeMove()
	err := unix.Mount(staged, l.Target, "", unix.MS_MOVE, "")
	if err == nil {
		_ = os.Remove(staged)
		return nil
	}
	err = fmt.Errorf("move the overlay onto %s: %w", l.Target, err)
	if old == nil {
		return err
	}
	back, aerr := assemble(l, strings.TrimSuffix(old.Image, ".bundle"))
	if aerr == nil {
		beforeMove()
		if aerr = unix.Mount(back, l.Target, "", unix.MS_MOVE, ""); aerr == nil {
			_ = os.Remove(back)
			return fmt.Errorf("%w; generation %d is mounted again", err, old.Generation)
		}
		_ = unix.Unmount(back, unix.MNT_DETACH)
	}
	_ = os.Remove(l.file("mounted.json"))
	return fmt.Errorf("%w; putting generation %d back failed too, %s shows the rootfs's own files: %w", err, old.Generation, l.Target, aerr)
}

// Unmount takes our overlay off the target and releases everything under
// the run directory. Without our overlay it only tidies up.
func Unmount(l Layout) error {
	if err := l.check(); err != nil {
		return err
	}
	top, err := topMount(l.Target)
	if err != nil {
		return err
	}
	if top != nil && top.source == source {
		if err := unix.Unmount(l.Target, unix.MNT_DETACH); err != nil {
			return fmt.Errorf("unmount %s: %w", l.Target, err)
		}
	}
	entries, _ := os.ReadDir(l.file("images"))
	for _, e := range entries {
		dir := l.file("images", e.Name())
		_ = unix.Unmount(dir, unix.MNT_DETACH)
		_ = os.Remove(dir)
	}
	for _, dir := range []string{l.file("stage"), l.file("base"), l.RunDir} {
		for {
			m, err := topMount(dir)
			if err != nil || m == nil {
				break
			}
			if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
				return fmt.Errorf("unmount %s: %w", dir, err)
			}
		}
	}
	if err := os.Remove(l.file("mounted.json")); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

// ensureBase binds the rootfs's own target to base/, read-only, before the
// first overlay covers it.
func ensureBase(l Layout, overlaid bool) error {
	base := l.file("base")
	m, err := topMount(base)
	if err != nil || m != nil {
		return err
	}
	if overlaid {
		return fmt.Errorf("%s is covered by our overlay but %s is gone; run prov-device unmount first", l.Target, base)
	}
	if top, err := topMount(l.Target); err != nil {
		return err
	} else if top != nil && top.source == source {
		return fmt.Errorf("%s is covered by an overlay of ours that nothing records; run prov-device unmount first", l.Target)
	}
	if err := os.MkdirAll(base, 0o700); err != nil {
		return err
	}
	if err := unix.Mount(l.Target, base, "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("bind %s to %s: %w", l.Target, base, err)
	}
	// The bind joined the target's peer group; out of it, or every overlay
	// moved onto the target would appear here too.
	if err := unix.Mount("", base, "", unix.MS_PRIVATE, ""); err != nil {
		_ = unix.Unmount(base, unix.MNT_DETACH)
		return fmt.Errorf("make %s private: %w", base, err)
	}
	if err := unix.Mount("", base, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY, ""); err != nil {
		_ = unix.Unmount(base, unix.MNT_DETACH)
		return fmt.Errorf("make %s read-only: %w", base, err)
	}
	return nil
}

// ensurePrivate makes dir a mount of its own that does not propagate (a
// bind of itself, if it is no mount point yet), with its images/ and
// stage/: a mount can only be moved out of a parent that does not
// propagate, and what is mounted there concerns nobody else.
func ensurePrivate(dir string) error {
	for _, d := range []string{filepath.Join(dir, "images"), filepath.Join(dir, "stage")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return err
		}
	}
	if m, err := topMount(dir); err != nil {
		return err
	} else if m == nil {
		if err := unix.Mount(dir, dir, "", unix.MS_BIND, ""); err != nil {
			return fmt.Errorf("bind %s: %w", dir, err)
		}
	}
	if err := unix.Mount("", dir, "", unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("make %s private: %w", dir, err)
	}
	return nil
}

// mountImage loop-mounts the image inside the bundle file read-only.
func mountImage(in *install.Installed, dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil { // a mount point: the mount shows its own mode
		return err
	}
	if m, err := topMount(dir); err != nil {
		return err
	} else if m != nil {
		_ = unix.Unmount(dir, unix.MNT_DETACH) // left by a crash; the loop device auto-clears
	}
	dev, fd, err := attachLoop(in.Path, in.Offset, in.Length)
	if err != nil {
		return err
	}
	defer func() { _ = fd.Close() }() // after the mount, the mount holds the device
	if err := unix.Mount(dev, dir, "squashfs", unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		return fmt.Errorf("mount %s (%s) on %s: %w", in.Path, dev, dir, err)
	}
	return nil
}

// mountEntry is a line of /proc/self/mountinfo.
type mountEntry struct {
	id        int
	point     string
	fstype    string
	source    string
	superOpts string
	parentID  int
}

// topMount is the mount that path lookups at dir reach (the last one
// mounted there), or nil when dir is not a mount point.
func topMount(dir string) (*mountEntry, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	defer func() { _ = f.Close() }()
	var top *mountEntry
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		// id parent major:minor root mountpoint options [optional...] - fstype source superopts
		fields := strings.Fields(sc.Text())
		sep := -1
		for i, f := range fields {
			if f == "-" {
				sep = i
				break
			}
		}
		if len(fields) < 5 || sep < 0 || sep+2 >= len(fields) {
			continue
		}
		if unescape(fields[4]) != dir {
			continue
		}
		id, _ := strconv.Atoi(fields[0])
		parent, _ := strconv.Atoi(fields[1])
		e := &mountEntry{id: id, parentID: parent, point: dir, fstype: fields[sep+1], source: unescape(fields[sep+2])}
		if sep+3 < len(fields) {
			e.superOpts = unescape(fields[sep+3])
		}
		// Mounts stacked on one point: each later one has the earlier as
		// parent; the top is the one no other mount there names as parent.
		if top == nil || e.parentID == top.id {
			top = e
		}
	}
	return top, sc.Err()
}

// unescape undoes mountinfo's octal escapes (\040 for a space).
func unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
