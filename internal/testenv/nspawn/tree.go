package nspawn

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// loopNodes is how many /dev/loopN nodes are bound in: the kernel hands
// out the lowest free loop device, and tests on the host may hold some
// while a container test runs.
const loopNodes = 32

// mountTree mounts the machine's tree: an overlay with the cached root as
// its lower layer and dir's upper and work directories, so everything the
// machine writes lands in dir and the cache stays as it was built.
func (m *Machine) mountTree(root, dir string) error {
	upper, work := filepath.Join(dir, "upper"), filepath.Join(dir, "work")
	for _, d := range []string{upper, work, m.tree} {
		if err := os.Mkdir(d, 0o755); err != nil {
			return fmt.Errorf("overlay directory: %w", err)
		}
	}
	data := "lowerdir=" + root + ",upperdir=" + upper + ",workdir=" + work
	if err := syscall.Mount("overlay", m.tree, "overlay", 0, data); err != nil {
		return fmt.Errorf("mount an overlay over %s at %s: %w", root, m.tree, err)
	}
	m.mounted = true
	return nil
}

// install copies each file or tree into the machine's tree, keeping modes
// (a key stays 0600) and symbolic links, replacing what is there.
func install(tree string, files []File) error {
	for _, f := range files {
		if !filepath.IsAbs(f.Dst) {
			return fmt.Errorf("install %s: destination %q is not absolute", f.Src, f.Dst)
		}
		dst := filepath.Join(tree, f.Dst)
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return fmt.Errorf("install %s: %w", f.Src, err)
		}
		err := filepath.WalkDir(f.Src, func(src string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			rel, err := filepath.Rel(f.Src, src)
			if err != nil {
				return err
			}
			return copyEntry(src, filepath.Join(dst, rel), d)
		})
		if err != nil {
			return fmt.Errorf("install %s as %s: %w", f.Src, f.Dst, err)
		}
	}
	return nil
}

func copyEntry(src, dst string, d fs.DirEntry) error {
	info, err := d.Info()
	if err != nil {
		return err
	}
	switch {
	case d.IsDir():
		if err := os.MkdirAll(dst, info.Mode().Perm()); err != nil {
			return err
		}
		return os.Chmod(dst, info.Mode().Perm())
	case d.Type()&fs.ModeSymlink != 0:
		target, err := os.Readlink(src)
		if err != nil {
			return err
		}
		if err := os.Remove(dst); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		return os.Symlink(target, dst)
	case d.Type().IsRegular():
		in, err := os.Open(src)
		if err != nil {
			return err
		}
		defer func() { _ = in.Close() }()
		out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, info.Mode().Perm())
		if err != nil {
			return err
		}
		if _, err := io.Copy(out, in); err != nil {
			_ = out.Close()
			return err
		}
		if err := out.Close(); err != nil {
			return err
		}
		return os.Chmod(dst, info.Mode().Perm()) // an existing file keeps its mode through O_TRUNC
	default:
		return fmt.Errorf("%s is neither a file, a directory nor a symbolic link", src)
	}
}

// enable runs the tree's own systemctl in a chroot: it sees it is not
// talking to a running manager and only writes the links.
func enable(tree string, units []string) error {
	if len(units) == 0 {
		return nil
	}
	cmd := exec.Command("/usr/bin/systemctl", append([]string{"enable"}, units...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Chroot: tree}
	cmd.Env = containerEnv
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("systemctl enable %s in the tree: %w\n%s", strings.Join(units, " "), err, out)
	}
	return nil
}

// loopDevices returns /dev/loop-control and /dev/loop0 to loop31, making
// the nodes that are missing on the host (block major 7): the kernel
// creates a loop device on demand, but only udev or devtmpfs make its
// node, and neither reaches the container's /dev.
func loopDevices() ([]string, error) {
	const loopMajor = 7
	if _, err := os.Stat("/dev/loop-control"); err != nil {
		return nil, fmt.Errorf("loop devices: %w (is the loop module loaded?)", err)
	}
	devs := []string{"/dev/loop-control"}
	for i := range loopNodes {
		p := "/dev/loop" + strconv.Itoa(i)
		err := syscall.Mknod(p, syscall.S_IFBLK|0o660, mkdev(loopMajor, i))
		if err != nil && !errors.Is(err, fs.ErrExist) {
			return nil, fmt.Errorf("make %s: %w", p, err)
		}
		devs = append(devs, p)
	}
	return devs, nil
}

// mkdev is the kernel's encoding of a device number (glibc's makedev).
func mkdev(major, minor int) int {
	return (minor & 0xff) | (major&0xfff)<<8 | (minor&^0xff)<<12 | (major&^0xfff)<<32
}
