package inspect_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/fleetprov/prov/core/contract/imagespec"
	"github.com/fleetprov/prov/core/imagebuild"
	"github.com/fleetprov/prov/core/imagebuild/squashfs"
	"github.com/fleetprov/prov/deviceclient/inspect"
	"github.com/fleetprov/prov/deviceclient/inspect/inspecttest"
	"github.com/fleetprov/prov/internal/testenv"
)

// Each case is a good image core built, changed at the byte level, and the
// one check the case names refuses it (the first check that fails is that
// one, so the order of the checks is tested too).
func TestEachCheckRefusesItsCase(t *testing.T) {
	good := build(t, record())
	if _, err := run(good, expect()); err != nil {
		t.Fatalf("the good image is refused: %v", err)
	}
	for _, c := range inspecttest.Cases() {
		t.Run(c.Name, func(t *testing.T) {
			img, err := c.Make(good)
			if err != nil {
				t.Fatal(err)
			}
			if bytes.Equal(img, good) {
				t.Fatal("the case changed nothing")
			}
			_, err = run(img, expect())
			var got *inspect.Check
			if !errors.As(err, &got) || got != c.Check {
				t.Fatalf("Inspect: %v; want check %s", err, c.Check.Name())
			}
			t.Logf("refused: %v", err)
		})
	}
}

// The checks no change of a good image's bytes can reach are tested with
// images the writer builds (or, for second-reader, cannot be made at all:
// it is the second reader disagreeing with the first).
var reachedOtherwise = map[string]string{
	"content-size":  "TestContentBound",
	"data-limits":   "TestRefusesWhatCoreNeverBuilds",
	"fixed-files":   "TestRefusesWhatCoreNeverBuilds",
	"second-reader": "none: CalebQ42/squashfs failing where the checks before it passed is a disagreement of two readers, kept as a second line",
}

func TestEveryCheckHasACase(t *testing.T) {
	cased := map[*inspect.Check]bool{}
	for _, c := range inspecttest.Cases() {
		cased[c.Check] = true
	}
	names := map[string]bool{}
	for _, c := range inspect.Checks() {
		if names[c.Name()] {
			t.Errorf("two checks named %s", c.Name())
		}
		names[c.Name()] = true
		if !regexp.MustCompile(`^[a-z0-9]+(-[a-z0-9]+)*$`).MatchString(c.Name()) {
			t.Errorf("check name %q is not lower-case words joined by '-'", c.Name())
		}
		if _, ok := reachedOtherwise[c.Name()]; !cased[c] && !ok {
			t.Errorf("check %s has no case in inspecttest.Cases and no other test", c.Name())
		}
	}
	for n := range reachedOtherwise {
		if !names[n] {
			t.Errorf("reachedOtherwise names %s, which is no check", n)
		}
	}
}

// TestContentBound: all files' sizes together are bounded before any data
// is inflated: 24 files of 64 KiB are refused by the content bound, before
// the walk would count them as data files.
func TestContentBound(t *testing.T) {
	es := entries(t, record())
	for i := range 24 {
		es = append(es, squashfs.Entry{Path: fmt.Sprintf("/etc/prov/data/big%02d", i), Mode: 0o644, Data: bytes.Repeat([]byte{'a' + byte(i)}, imagespec.MaxFileSize)})
	}
	img, err := squashfs.Build(es, squashfs.Options{Compression: squashfs.Gzip})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := run(img, expect()); !errors.Is(err, inspect.ErrContentSize) {
		t.Fatalf("Inspect: %v", err)
	}
}

// The section "Pre-mount inspection" of docs/image-format.md lists the
// checks in the order the code runs them, each with its name.
func TestDocumentListsTheChecksInOrder(t *testing.T) {
	doc, err := os.ReadFile(filepath.Join("..", "..", "docs", "image-format.md"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?ms)^#+ [0-9.]* *Pre-mount inspection\n(.*?)(\n#+ |\z)`).FindSubmatch(doc)
	if m == nil {
		t.Fatal(`docs/image-format.md has no section "Pre-mount inspection"`)
	}
	var listed []string
	for _, l := range regexp.MustCompile("(?m)^[0-9]+\\. +`([a-z0-9-]+)`").FindAllSubmatch(m[1], -1) {
		listed = append(listed, string(l[1]))
	}
	var want []string
	for _, c := range inspect.Checks() {
		want = append(want, c.Name())
	}
	if !slices.Equal(listed, want) {
		t.Errorf("the document lists\n  %s\nthe code runs\n  %s", strings.Join(listed, " "), strings.Join(want, " "))
	}
}

// TestAcceptedIsKernelReadable is the differential check: every image the
// inspection accepts, the kernel's squashfs mounts and reads, every file,
// and shows the tree the inspection listed. The images: what core builds,
// the writer's zlib images, and every single-byte change of a good image's
// superblock and tables (and of its data) that the inspection lets through.
func TestAcceptedIsKernelReadable(t *testing.T) {
	testenv.Root(t, "loop-mounts images with the kernel's squashfs")
	testenv.Tool(t, "mount", "install util-linux")
	type accepted struct {
		name string
		img  []byte
		l    *inspect.Listing
		want inspect.Expect
	}
	var all []accepted
	seen := map[[32]byte]bool{}
	try := func(name string, img []byte, want inspect.Expect) {
		if seen[sha256.Sum256(img)] {
			return
		}
		seen[sha256.Sum256(img)] = true
		if l, err := run(img, want); err == nil {
			all = append(all, accepted{name, img, l, want})
		}
	}
	good := build(t, record())
	try("good", good, expect())
	gz, err := squashfs.Build(entries(t, record()), squashfs.Options{Compression: squashfs.Gzip})
	if err != nil {
		t.Fatal(err)
	}
	try("good zlib", gz, expect())
	for i := range 4 {
		rec := record()
		rec.Data[fmt.Sprintf("/etc/prov/data/d%d/big", i)] = strings.Repeat(fmt.Sprintf("%d", i), 40000+i*7000)
		img := build(t, rec)
		try(fmt.Sprintf("record %d", i), img, expect())
		z, err := squashfs.Build(entries(t, rec), squashfs.Options{Compression: squashfs.Gzip})
		if err != nil {
			t.Fatal(err)
		}
		try(fmt.Sprintf("record %d zlib", i), z, expect())
	}
	// At the limits: 256 data files of 4 KiB, whose inodes and listings
	// cross metadata blocks (a directory header per inode block).
	full := record()
	full.Data = map[string]string{}
	for i := range imagespec.MaxDataFiles {
		full.Data[fmt.Sprintf("/etc/prov/data/d%d/f%03d", i%3, i)] = strings.Repeat(fmt.Sprintf("%03d\n", i), imagespec.MaxTotalSize/imagespec.MaxDataFiles/4)
	}
	for _, comp := range []squashfs.Compression{squashfs.None, squashfs.Gzip} {
		img, err := squashfs.Build(entries(t, full), squashfs.Options{Compression: comp})
		if err != nil {
			t.Fatal(err)
		}
		if le := binary.LittleEndian; comp == squashfs.None && le.Uint64(img[72:])-le.Uint64(img[64:]) <= 8194 {
			t.Fatalf("the inode table fits one metadata block; the case tests less than it says")
		}
		n := len(all)
		try(fmt.Sprintf("at the limits, compression %d", comp), img, expect())
		if len(all) == n {
			_, err := run(img, expect())
			t.Fatalf("an image at the limits is refused: %v", err)
		}
	}
	// An empty data file and an empty directory: no blocks, no listing.
	empty := append(entries(t, record()),
		squashfs.Entry{Path: "/etc/prov/data/empty", Mode: imagespec.FileMode},
		squashfs.Entry{Path: "/etc/prov/data/none", Dir: true, Mode: imagespec.DirMode})
	for _, comp := range []squashfs.Compression{squashfs.None, squashfs.Gzip} {
		img, err := squashfs.Build(empty, squashfs.Options{Compression: comp})
		if err != nil {
			t.Fatal(err)
		}
		n := len(all)
		try(fmt.Sprintf("empty file and directory, compression %d", comp), img, expect())
		if len(all) == n {
			_, err := run(img, expect())
			t.Fatalf("an image with an empty file and an empty directory is refused: %v", err)
		}
	}
	base := len(all)
	// Every byte of the superblock and the tables, six ways; the data area
	// (file contents: many changes there are accepted, and alike) a byte in
	// seven, one way. Of the image core builds and of its zlib twin.
	mutants := 0
	for _, img := range []struct {
		name string
		b    []byte
	}{{"", good}, {"zlib ", gz}} {
		le := binary.LittleEndian
		used, inodeTable := int(le.Uint64(img.b[40:])), int(le.Uint64(img.b[64:])) //nolint:gosec // a small image
		for off := range used {
			old := img.b[off]
			values := []byte{old ^ 0x01, old ^ 0x80, old + 1, old - 1, 0, 0xff}
			if off >= 96 && off < inodeTable {
				if off%7 != 0 {
					continue
				}
				values = values[:1]
			}
			for _, v := range values {
				if v == old {
					continue
				}
				m := bytes.Clone(img.b)
				m[off] = v
				mutants++
				try(fmt.Sprintf("%sbyte %d = %#02x", img.name, off, v), m, expect())
			}
		}
	}
	t.Logf("%d single-byte changes; %d accepted; %d images to mount in all", mutants, len(all)-base, len(all))
	if len(all)-base == 0 {
		t.Fatal("no change was accepted, so nothing is compared: the data files' bytes at least should be")
	}
	for _, a := range all {
		t.Run(a.name, func(t *testing.T) {
			got := kernelRead(t, a.img)
			for _, e := range a.l.Entries {
				g, ok := got[e.Path]
				switch {
				case !ok:
					t.Errorf("the kernel shows no %s", e.Path)
				case g.Mode != e.Mode:
					t.Errorf("%s: the kernel says mode %v, the inspection %v", e.Path, g.Mode, e.Mode)
				case !e.Dir && g.Size != e.Size:
					t.Errorf("%s: the kernel read %d bytes, the inspection says %d", e.Path, g.Size, e.Size)
				}
				delete(got, e.Path)
			}
			for p := range got {
				t.Errorf("the kernel shows %s, which the inspection did not list", p)
			}
		})
	}
}

// kernelRead mounts img read-only with the kernel's squashfs and reads
// every file; any error fails t. It returns the tree by absolute path
// ("/etc/hostname"), without the root.
func kernelRead(t *testing.T, img []byte) map[string]inspect.Entry {
	t.Helper()
	dir := t.TempDir()
	file, mnt := filepath.Join(dir, "image"), filepath.Join(dir, "mnt")
	if err := os.WriteFile(file, img, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(mnt, 0o700); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "squashfs", "-o", "ro,loop,nosuid,nodev,noexec", file, mnt).CombinedOutput(); err != nil {
		t.Fatalf("the inspection accepted an image the kernel does not mount: %v\n%s", err, out)
	}
	defer func() {
		if out, err := exec.Command("umount", mnt).CombinedOutput(); err != nil {
			t.Errorf("umount: %v\n%s", err, out)
		}
	}()
	tree := map[string]inspect.Entry{}
	err := filepath.WalkDir(mnt, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel := strings.TrimPrefix(p, mnt)
		if rel == "" {
			return nil
		}
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		if d.IsDir() != fi.IsDir() {
			return fmt.Errorf("%s: readdir says dir=%v, stat %v", rel, d.IsDir(), fi.Mode())
		}
		e := inspect.Entry{Path: rel, Dir: fi.IsDir(), Mode: fi.Mode()}
		if !e.Dir {
			data, err := os.ReadFile(p)
			if err != nil {
				return fmt.Errorf("the inspection accepted an image the kernel cannot read: %w", err)
			}
			e.Size = int64(len(data))
		}
		tree[rel] = e
		return nil
	})
	if err != nil {
		t.Error(err)
	}
	return tree
}

// The findings of issue 14 were accepted before: images the kernel reads
// wrong, or that core never builds.
func TestFindings(t *testing.T) {
	good := build(t, record())
	for _, tc := range []struct {
		name string
		make func([]byte) ([]byte, error)
		want *inspect.Check
	}{
		{"64 KiB blocks", inspecttest.BlockSize64K, inspect.ErrBlockSize},
		{"another flag (DUPLICATES)", inspecttest.FlagDuplicates, inspect.ErrFlags},
		{"a file's size larger than its data", inspecttest.FileSizeLarger, inspect.ErrFileSize},
		{"a directory entry's type not its inode's", inspecttest.DirentType, inspect.ErrDirentType},
	} {
		t.Run(tc.name, func(t *testing.T) {
			img, err := tc.make(good)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := run(img, expect()); !errors.Is(err, tc.want) {
				t.Fatalf("Inspect: %v; want %s", err, tc.want.Name())
			}
		})
	}
	// What the finding was: the kernel mounts the image and fails reading
	// the file. Shown, not assumed, so the check refuses what must be.
	t.Run("the kernel fails reading a file whose size is larger than its data", func(t *testing.T) {
		testenv.Root(t, "loop-mounts an image with the kernel's squashfs")
		img, err := inspecttest.FileSizeLarger(good)
		if err != nil {
			t.Fatal(err)
		}
		dir := t.TempDir()
		file, mnt := filepath.Join(dir, "image"), filepath.Join(dir, "mnt")
		must(t, os.WriteFile(file, img, 0o600))
		must(t, os.Mkdir(mnt, 0o700))
		if out, err := exec.Command("mount", "-t", "squashfs", "-o", "ro,loop", file, mnt).CombinedOutput(); err != nil {
			t.Fatalf("mount: %v\n%s", err, out)
		}
		defer func() { _ = exec.Command("umount", mnt).Run() }()
		if _, err := os.ReadFile(filepath.Join(mnt, "etc", "hostname")); err == nil {
			t.Fatal("the kernel read /etc/hostname; the case does not show the finding")
		} else {
			t.Logf("the kernel: %v", err)
		}
	})
}

// BenchmarkInspect measures the whole inspection (prescan, second reader,
// fixed files) of an image core builds: a small one and one near the
// limits (16 data files of 60 KiB), uncompressed and zlib.
func BenchmarkInspect(b *testing.B) {
	small := record()
	big := record()
	for j := range 16 {
		big.Data[fmt.Sprintf("/etc/prov/data/f%02d", j)] = strings.Repeat(string(rune('a'+j)), 60<<10)
	}
	for _, tc := range []struct {
		name string
		rec  *imagebuild.Record
		comp squashfs.Compression
	}{{"small", small, squashfs.None}, {"1MiB", big, squashfs.None}, {"small-zlib", small, squashfs.Gzip}, {"1MiB-zlib", big, squashfs.Gzip}} {
		b.Run(tc.name, func(b *testing.B) {
			img, err := squashfs.Build(entries(b, tc.rec), squashfs.Options{Compression: tc.comp})
			if err != nil {
				b.Fatal(err)
			}
			b.SetBytes(int64(len(img)))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := run(img, expect()); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
