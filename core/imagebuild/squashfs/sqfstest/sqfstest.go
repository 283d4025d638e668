// Package sqfstest checks squashfs images against independent readers:
// Debian's unsquashfs (listing and extraction), the kernel's own squashfs
// driver (a read-only loop mount, as root), github.com/CalebQ42/squashfs
// v1.4.1, and mksquashfs on the same tree. Tests call Check with the tree an
// image should hold; each oracle that is absent skips with a message (CI
// installs them all and turns such skips into failures).
package sqfstest

import (
	"bytes"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/CalebQ42/squashfs"

	sq "github.com/fleetprov/prov/core/imagebuild/squashfs"
	"github.com/fleetprov/prov/internal/testenv"
)

// Node is what one path of the tree should be.
type Node struct {
	Dir  bool
	Mode fs.FileMode // permission bits
	Data []byte
}

// Tree is a tree by slash path relative to the root ("etc/hostname"); it
// includes every directory, implied ones with mode 0755.
type Tree map[string]Node

// TreeOf returns the tree that entries describe.
func TreeOf(entries []sq.Entry) Tree {
	t := Tree{}
	for _, e := range entries {
		p := strings.Trim(e.Path, "/")
		if p == "" {
			continue
		}
		for d := path.Dir(p); d != "."; d = path.Dir(d) {
			if _, ok := t[d]; !ok {
				t[d] = Node{Dir: true, Mode: 0o755}
			}
		}
		t[p] = Node{Dir: e.Dir, Mode: e.Mode, Data: e.Data}
	}
	return t
}

// Oracles selects which independent readers Check runs.
type Oracles struct {
	Unsquashfs, Kernel, CalebQ42, Mksquashfs bool
}

// All runs every oracle.
var All = Oracles{Unsquashfs: true, Kernel: true, CalebQ42: true, Mksquashfs: true}

// Check runs the selected oracles on img and fails t where one disagrees
// with want.
func Check(t *testing.T, img []byte, want Tree, o Oracles) {
	t.Helper()
	if o.CalebQ42 {
		t.Run("calebq42", func(t *testing.T) { compare(t, "CalebQ42/squashfs", readCalebQ42(t, img), want) })
	}
	if o.Unsquashfs {
		t.Run("unsquashfs", func(t *testing.T) {
			file := writeImage(t, img)
			checkListing(t, file, want)
			compare(t, "unsquashfs -d", extract(t, file), want)
		})
	}
	if o.Kernel {
		t.Run("kernel", func(t *testing.T) { compare(t, "kernel mount", mountAndRead(t, img), want) })
	}
	if o.Mksquashfs {
		t.Run("mksquashfs", func(t *testing.T) {
			// mksquashfs on the same tree must extract to what ours extracts to.
			theirs := extract(t, mksquashfs(t, want))
			compare(t, "mksquashfs of the same tree", theirs, want)
			if o.Unsquashfs {
				compare(t, "ours vs mksquashfs", extract(t, writeImage(t, img)), theirs)
			}
		})
	}
}

func writeImage(t *testing.T, img []byte) string {
	t.Helper()
	f := filepath.Join(t.TempDir(), "image.squashfs")
	if err := os.WriteFile(f, img, 0o600); err != nil {
		t.Fatal(err)
	}
	return f
}

func compare(t *testing.T, who string, got, want Tree) {
	t.Helper()
	for p, w := range want {
		g, ok := got[p]
		switch {
		case !ok:
			t.Errorf("%s: %s missing", who, p)
		case g.Dir != w.Dir:
			t.Errorf("%s: %s dir=%v, want %v", who, p, g.Dir, w.Dir)
		case g.Mode != w.Mode:
			t.Errorf("%s: %s mode %04o, want %04o", who, p, g.Mode, w.Mode)
		case !w.Dir && !bytes.Equal(g.Data, w.Data):
			t.Errorf("%s: %s holds %d bytes that differ from the %d wanted", who, p, len(g.Data), len(w.Data))
		}
	}
	for p := range got {
		if _, ok := want[p]; !ok {
			t.Errorf("%s: unexpected %s", who, p)
		}
	}
}

// readDir reads a directory tree from disk; anything but directories and
// regular files owned by root is an error.
func readDir(t *testing.T, root string) Tree {
	t.Helper()
	tree := Tree{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		if rel == "." {
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		n := Node{Dir: d.IsDir(), Mode: fi.Mode().Perm()}
		if fi.Mode()&(fs.ModeSetuid|fs.ModeSetgid|fs.ModeSticky) != 0 {
			t.Errorf("%s has special mode bits %v", rel, fi.Mode())
		}
		if !d.IsDir() {
			if !fi.Mode().IsRegular() {
				t.Errorf("%s is not a regular file: %v", rel, fi.Mode())
				return nil
			}
			if n.Data, err = os.ReadFile(p); err != nil {
				return err
			}
		}
		tree[filepath.ToSlash(rel)] = n
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return tree
}

func unsquashfs(t *testing.T) string {
	t.Helper()
	return testenv.Tool(t, "unsquashfs", "install Debian's squashfs-tools")
}

func extract(t *testing.T, file string) Tree {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "x")
	out, err := exec.Command(unsquashfs(t), "-no-progress", "-d", dir, file).CombinedOutput()
	if err != nil {
		t.Fatalf("unsquashfs -d: %v\n%s", err, out)
	}
	return readDir(t, dir)
}

// checkListing parses unsquashfs -lls: every entry with its mode, owner
// root/root, and for files the size.
func checkListing(t *testing.T, file string, want Tree) {
	t.Helper()
	out, err := exec.Command(unsquashfs(t), "-lls", file).CombinedOutput()
	if err != nil {
		t.Fatalf("unsquashfs -lls: %v\n%s", err, out)
	}
	seen := map[string]bool{}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Fields(line)
		if len(f) < 6 || !strings.HasPrefix(f[5], "squashfs-root") {
			continue // headers
		}
		p := strings.TrimPrefix(strings.TrimPrefix(f[5], "squashfs-root"), "/")
		if p == "" {
			continue
		}
		seen[p] = true
		w, ok := want[p]
		if !ok {
			t.Errorf("unsquashfs -lls lists unexpected %s", p)
			continue
		}
		if f[1] != "root/root" {
			t.Errorf("unsquashfs -lls: %s owner %s", p, f[1])
		}
		if wantMode := modeString(w); f[0] != wantMode {
			t.Errorf("unsquashfs -lls: %s mode %s, want %s", p, f[0], wantMode)
		}
		if !w.Dir && f[2] != strconv.Itoa(len(w.Data)) {
			t.Errorf("unsquashfs -lls: %s size %s, want %d", p, f[2], len(w.Data))
		}
	}
	for p := range want {
		if !seen[p] {
			t.Errorf("unsquashfs -lls does not list %s", p)
		}
	}
}

func modeString(n Node) string {
	m := n.Mode
	if n.Dir {
		m |= fs.ModeDir
	}
	return m.String()
}

func mountAndRead(t *testing.T, img []byte) Tree {
	t.Helper()
	testenv.Root(t, "loop-mounts the image with the kernel's squashfs driver")
	file := writeImage(t, img)
	mnt := filepath.Join(t.TempDir(), "mnt")
	if err := os.Mkdir(mnt, 0o700); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "squashfs", "-o", "ro,loop,nosuid,nodev,noexec", file, mnt).CombinedOutput(); err != nil {
		t.Fatalf("mount: %v\n%s", err, out)
	}
	defer func() {
		if out, err := exec.Command("umount", mnt).CombinedOutput(); err != nil {
			t.Errorf("umount: %v\n%s", err, out)
		}
	}()
	return readDir(t, mnt)
}

func readCalebQ42(t *testing.T, img []byte) Tree {
	t.Helper()
	r, err := squashfs.NewReader(bytes.NewReader(img))
	if err != nil {
		t.Fatalf("CalebQ42/squashfs: %v", err)
	}
	tree := Tree{}
	err = fs.WalkDir(r, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p == "." {
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		fi, ok := info.(squashfs.FileInfo)
		if !ok {
			return fmt.Errorf("%s: FileInfo is %T", p, info)
		}
		if fi.Uid() != 0 || fi.Gid() != 0 {
			t.Errorf("CalebQ42: %s owned by %d:%d", p, fi.Uid(), fi.Gid())
		}
		n := Node{Dir: d.IsDir(), Mode: fi.Mode().Perm()}
		// v1.4.1 cannot read an empty file ("invalid block index"), from
		// mksquashfs's images too; its size is all there is to check.
		if !d.IsDir() && fi.Size() > 0 {
			if n.Data, err = fs.ReadFile(r, p); err != nil {
				return fmt.Errorf("read %s: %w", p, err)
			}
		}
		tree[p] = n
		return nil
	})
	if err != nil {
		t.Fatalf("CalebQ42/squashfs walk: %v", err)
	}
	return tree
}

// mksquashfs writes want to disk and packs it with mksquashfs.
func mksquashfs(t *testing.T, want Tree) string {
	t.Helper()
	bin := testenv.Tool(t, "mksquashfs", "install Debian's squashfs-tools")
	src := filepath.Join(t.TempDir(), "src")
	paths := make([]string, 0, len(want))
	for p := range want {
		paths = append(paths, p)
	}
	sort.Strings(paths) // parents first
	if err := os.Mkdir(src, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, p := range paths {
		n, full := want[p], filepath.Join(src, filepath.FromSlash(p))
		if n.Dir {
			if err := os.MkdirAll(full, 0o755); err != nil {
				t.Fatal(err)
			}
		} else {
			if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(full, n.Data, 0o600); err != nil {
				t.Fatal(err)
			}
		}
		if err := os.Chmod(full, n.Mode); err != nil {
			t.Fatal(err)
		}
	}
	out := filepath.Join(t.TempDir(), "theirs.squashfs")
	if b, err := exec.Command(bin, src, out, "-noappend", "-all-root", "-all-time", "0", "-quiet", "-no-progress").CombinedOutput(); err != nil {
		t.Fatalf("mksquashfs: %v\n%s", err, b)
	}
	return out
}
