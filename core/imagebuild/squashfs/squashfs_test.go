package squashfs_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/fleetprov/prov/core/imagebuild/squashfs"
	"github.com/fleetprov/prov/core/imagebuild/squashfs/sqfstest"
)

func file(p, data string) squashfs.Entry {
	return squashfs.Entry{Path: p, Mode: 0o644, Data: []byte(data)}
}

func TestOracles(t *testing.T) {
	many := func(n int, prefix string) []squashfs.Entry {
		var es []squashfs.Entry
		for i := range n {
			es = append(es, file(fmt.Sprintf("%s/f%04d", prefix, i), fmt.Sprintf("file %d\n", i)))
		}
		return es
	}
	big := bytes.Repeat([]byte("0123456789abcdef"), 20000) // 320,000 bytes: 3 blocks, the last partial
	for _, tc := range []struct {
		name    string
		entries []squashfs.Entry
	}{
		{"empty image", nil},
		{"one file", []squashfs.Entry{file("/etc/hostname", "host1\n")}},
		{"empty file and empty dir", []squashfs.Entry{file("etc/empty", ""), {Path: "etc/emptydir", Dir: true, Mode: 0o755}}},
		{"modes", []squashfs.Entry{{Path: "etc/x", Mode: 0o600, Data: []byte("x")}, {Path: "etc/d", Dir: true, Mode: 0o700}, file("etc/d/y", "y")}},
		{"nested", []squashfs.Entry{file("etc/prov/data/a/b/c", "deep"), file("etc/prov/image.json", "{}\n"), file("etc/hostname", "h\n")}},
		{"multi-block file", []squashfs.Entry{{Path: "etc/big", Mode: 0o644, Data: big}}},
		{"exactly one block", []squashfs.Entry{{Path: "etc/block", Mode: 0o644, Data: bytes.Repeat([]byte{7}, 128<<10)}}},
		// 600 entries in one directory: several directory headers (at most
		// 256 entries each) and an inode table past one 8 KiB metadata block.
		{"wide directory", many(600, "etc/wide")},
		{"long names", []squashfs.Entry{file("etc/"+strings.Repeat("n", 255), "long"), file("etc/"+strings.Repeat("m", 200), "shorter")}},
		{"names sorted bytewise", []squashfs.Entry{file("etc/b", "1"), file("etc/B", "2"), file("etc/a-", "3"), file("etc/a", "4"), file("etc/a.b", "5"), file("etc/_", "6")}},
	} {
		for _, comp := range []squashfs.Compression{squashfs.None, squashfs.Gzip} {
			t.Run(fmt.Sprintf("%s/%s", tc.name, compName(comp)), func(t *testing.T) {
				img, err := squashfs.Build(tc.entries, squashfs.Options{Compression: comp})
				if err != nil {
					t.Fatal(err)
				}
				if len(img)%4096 != 0 {
					t.Errorf("image of %d bytes is not padded to 4 KiB", len(img))
				}
				sqfstest.Check(t, img, sqfstest.TreeOf(tc.entries), sqfstest.All)
			})
		}
	}
}

func compName(c squashfs.Compression) string {
	if c == squashfs.Gzip {
		return "gzip"
	}
	return "none"
}

// TestRandomTrees is the property test: random trees of files and
// directories, random names and sizes, both compressions; every image passes
// every oracle.
func TestRandomTrees(t *testing.T) {
	n := 24
	if testing.Short() {
		n = 4
	}
	for seed := range n {
		r := rand.New(rand.NewPCG(uint64(seed), 0x5eed))
		entries := randomTree(r)
		comp := squashfs.Compression(seed % 2)
		t.Run(fmt.Sprintf("seed%d", seed), func(t *testing.T) {
			img, err := squashfs.Build(entries, squashfs.Options{Compression: comp})
			if err != nil {
				t.Fatal(err)
			}
			sqfstest.Check(t, img, sqfstest.TreeOf(entries), sqfstest.All)
		})
	}
}

func randomTree(r *rand.Rand) []squashfs.Entry {
	const alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-"
	name := func() string {
		b := make([]byte, 1+r.IntN(20))
		for i := range b {
			b[i] = alphabet[r.IntN(len(alphabet))]
		}
		if b[0] == '.' {
			b[0] = 'x' // "." and ".." are not names
		}
		return string(b)
	}
	dirs := []string{"etc"}
	used := map[string]bool{"etc": true}
	var entries []squashfs.Entry
	for range 1 + r.IntN(80) {
		parent := dirs[r.IntN(len(dirs))]
		p := parent + "/" + name()
		if used[p] {
			continue
		}
		used[p] = true
		if r.IntN(4) == 0 {
			dirs = append(dirs, p)
			entries = append(entries, squashfs.Entry{Path: p, Dir: true, Mode: []fs.FileMode{0o755, 0o700, 0o750}[r.IntN(3)]})
			continue
		}
		size := r.IntN(3000)
		if r.IntN(20) == 0 {
			size = r.IntN(300 << 10)
		}
		data := make([]byte, size)
		if r.IntN(2) == 0 {
			for i := range data {
				data[i] = byte(r.Uint32())
			}
		} else {
			for i := range data {
				data[i] = "abc\n"[r.IntN(4)]
			}
		}
		entries = append(entries, squashfs.Entry{Path: p, Mode: []fs.FileMode{0o644, 0o600, 0o444}[r.IntN(3)], Data: data})
	}
	return entries
}

// TestGolden pins the bytes: a digest change is a deliberate, versioned
// format change (imagespec.FormatVersion), never an accident. The gzip
// digest also pins Go's compress/flate output (Go 1.26); images use None.
func TestGolden(t *testing.T) {
	entries := []squashfs.Entry{
		file("/etc/hostname", "dev-1a2b3c4d5e\n"),
		file("/etc/serial-number", "1a2b3c4d5e\n"),
		file("/etc/prov/data/motd", strings.Repeat("welcome\n", 100)),
		{Path: "/etc/prov/data/empty", Dir: true, Mode: 0o755},
	}
	for _, tc := range []struct {
		comp squashfs.Compression
		want string
	}{
		{squashfs.None, "dac445ae9160c82b3709faafb7d694e747fcc1cf5e33e2078c1c667a2fbd6aae"},
		{squashfs.Gzip, "1e8c9be3071a61465e1267b0c6ee88bb35f0373c20ed30e22eeca9708270e0ea"},
	} {
		img, err := squashfs.Build(entries, squashfs.Options{Compression: tc.comp})
		if err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256(img)
		if got := hex.EncodeToString(sum[:]); got != tc.want {
			t.Errorf("%s: sha256 %s, pinned %s", compName(tc.comp), got, tc.want)
		}
	}
}

func TestDeterministic(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	entries := randomTree(r)
	a, err := squashfs.Build(entries, squashfs.Options{})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		shuffled := append([]squashfs.Entry(nil), entries...)
		r.Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
		b, err := squashfs.Build(shuffled, squashfs.Options{})
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(a, b) {
			t.Fatalf("shuffle %d: the same tree in another order gives other bytes", i)
		}
	}
}

func TestRefusals(t *testing.T) {
	for _, tc := range []struct {
		name    string
		entries []squashfs.Entry
		opts    squashfs.Options
		err     error
	}{
		{"dot-dot", []squashfs.Entry{file("etc/../x", "")}, squashfs.Options{}, squashfs.ErrBadPath},
		{"dot", []squashfs.Entry{file("etc/./x", "")}, squashfs.Options{}, squashfs.ErrBadPath},
		{"empty name", []squashfs.Entry{file("etc//x", "")}, squashfs.Options{}, squashfs.ErrBadPath},
		{"trailing slash", []squashfs.Entry{file("etc/x/", "")}, squashfs.Options{}, squashfs.ErrBadPath},
		{"NUL", []squashfs.Entry{file("etc/x\x00", "")}, squashfs.Options{}, squashfs.ErrBadPath},
		{"name too long", []squashfs.Entry{file("etc/"+strings.Repeat("n", 256), "")}, squashfs.Options{}, squashfs.ErrBadPath},
		{"setuid", []squashfs.Entry{{Path: "etc/x", Mode: 0o4755}}, squashfs.Options{}, squashfs.ErrBadEntry},
		{"symlink", []squashfs.Entry{{Path: "etc/x", Mode: fs.ModeSymlink | 0o777}}, squashfs.Options{}, squashfs.ErrBadEntry},
		{"device", []squashfs.Entry{{Path: "etc/x", Mode: fs.ModeDevice | 0o600}}, squashfs.Options{}, squashfs.ErrBadEntry},
		{"duplicate", []squashfs.Entry{file("etc/x", "1"), file("etc/x", "2")}, squashfs.Options{}, squashfs.ErrBadEntry},
		{"file under a file", []squashfs.Entry{file("etc/x", "1"), file("etc/x/y", "2")}, squashfs.Options{}, squashfs.ErrBadEntry},
		{"dir with data", []squashfs.Entry{{Path: "etc/d", Dir: true, Data: []byte("x")}}, squashfs.Options{}, squashfs.ErrBadEntry},
		{"root as a file", []squashfs.Entry{file("/", "x")}, squashfs.Options{}, squashfs.ErrBadEntry},
		{"odd block size", nil, squashfs.Options{BlockSize: 5000}, nil},
		{"unknown compression", nil, squashfs.Options{Compression: 7}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := squashfs.Build(tc.entries, tc.opts)
			if err == nil || (tc.err != nil && !errors.Is(err, tc.err)) {
				t.Fatalf("Build: %v; want %v", err, tc.err)
			}
		})
	}
}

func BenchmarkBuild(b *testing.B) {
	entries := []squashfs.Entry{
		file("/etc/hostname", "dev-1a2b3c4d5e\n"),
		file("/etc/machine-id", "0123456789abcdef0123456789abcdef\n"),
		file("/etc/serial-number", "1a2b3c4d5e\n"),
		file("/etc/mqtt-client-id", "dev-1a2b3c4d5e\n"),
		file("/etc/mqtt-group-id", "line-a\n"),
		file("/etc/prov/image.json", `{"format":1,"serial":"1a2b3c4d5e","generation":1,"issuedAt":"2026-01-01T00:00:00Z"}`+"\n"),
		file("/etc/extension-release.d/extension-release.prov", "ID=_any\n"),
	}
	for _, comp := range []squashfs.Compression{squashfs.None, squashfs.Gzip} {
		b.Run(compName(comp), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := squashfs.Build(entries, squashfs.Options{Compression: comp}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
