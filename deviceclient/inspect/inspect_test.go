package inspect_test

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/fleetprov/prov/core/contract/imagespec"
	"github.com/fleetprov/prov/core/imagebuild"
	"github.com/fleetprov/prov/core/imagebuild/squashfs"
	"github.com/fleetprov/prov/deviceclient/inspect"
	"github.com/fleetprov/prov/deviceclient/inspect/inspecttest"
	"github.com/fleetprov/prov/internal/testenv"
)

func record() *imagebuild.Record {
	return &imagebuild.Record{
		Serial: "1a2b3c4d5e", Generation: 4, IssuedAt: time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC),
		Hostname: "dev-1a2b3c4d5e", MachineID: "7f3c9a0e5d2b4c8e9a1f0b3d5c7e9a1b",
		MQTTClientID: "dev-1a2b3c4d5e", MQTTGroupID: "line-a",
		Data: map[string]string{"/etc/prov/data/broker-url": "mqtts://broker:8883\n", "/etc/prov/data/wifi/ssid": "factory\n"},
	}
}

func expect() inspect.Expect {
	return inspect.Expect{Rules: imagespec.DefaultRules(), Serial: "1a2b3c4d5e", Generation: 4}
}

func build(t testing.TB, r *imagebuild.Record) []byte {
	t.Helper()
	img, err := imagebuild.Build(r, imagespec.DefaultRules())
	if err != nil {
		t.Fatal(err)
	}
	return img
}

func run(img []byte, e inspect.Expect) (*inspect.Listing, error) {
	return inspect.Inspect(bytes.NewReader(img), int64(len(img)), e)
}

func TestAcceptsWhatCoreBuilds(t *testing.T) {
	l, err := run(build(t, record()), expect())
	if err != nil {
		t.Fatal(err)
	}
	var paths []string
	for _, e := range l.Entries {
		paths = append(paths, e.Path)
	}
	want := "/etc /etc/extension-release.d /etc/extension-release.d/extension-release.prov /etc/hostname /etc/machine-id " +
		"/etc/mqtt-client-id /etc/mqtt-group-id /etc/prov /etc/prov/data /etc/prov/data/broker-url /etc/prov/data/wifi " +
		"/etc/prov/data/wifi/ssid /etc/prov/image.json /etc/serial-number"
	if got := strings.Join(paths, " "); got != want {
		t.Errorf("listing:\n got %s\nwant %s", got, want)
	}
	if l.Metadata.Generation != 4 || l.Metadata.Serial != "1a2b3c4d5e" {
		t.Errorf("metadata %+v", l.Metadata)
	}
}

// Every image core can build passes the device's inspection.
func TestAcceptsRandomRecords(t *testing.T) {
	rules := imagespec.Rules{AllowedPrefixes: []string{imagespec.DataDir, "/etc/app/"}}
	for seed := range 200 {
		r := rand.New(rand.NewPCG(uint64(seed), 7))
		rec := record()
		rec.Generation = 1 + r.Uint64N(1<<40)
		rec.Hostname = fmt.Sprintf("h%d", r.Uint32())
		if r.IntN(2) == 0 {
			rec.MachineID = ""
		}
		rec.Data = map[string]string{}
		for range r.IntN(40) {
			prefix := rules.AllowedPrefixes[r.IntN(2)]
			p := prefix + fmt.Sprintf("d%d/f%d", r.IntN(4), r.IntN(1000))
			if r.IntN(3) == 0 {
				p = prefix + fmt.Sprintf("f%d.conf", r.IntN(1000))
			}
			rec.Data[p] = strings.Repeat("v", r.IntN(5000))
		}
		img, err := imagebuild.Build(rec, rules)
		if err != nil {
			continue // a random file/directory clash; Build said so
		}
		if _, err := run(img, inspect.Expect{Rules: rules, Serial: rec.Serial, Generation: rec.Generation}); err != nil {
			t.Fatalf("seed %d: core built an image the device refuses: %v", seed, err)
		}
	}
}

// entries is a record's image as squashfs entries, for building images
// core would refuse to build.
func entries(t testing.TB, r *imagebuild.Record) []squashfs.Entry {
	t.Helper()
	files, err := r.Files(imagespec.DefaultRules())
	if err != nil {
		t.Fatal(err)
	}
	var es []squashfs.Entry
	for p, c := range files {
		es = append(es, squashfs.Entry{Path: p, Mode: imagespec.FileMode, Data: c})
	}
	return es
}

func TestRefusesWhatCoreNeverBuilds(t *testing.T) {
	with := func(extra ...squashfs.Entry) []squashfs.Entry { return append(entries(t, record()), extra...) }
	without := func(p string) []squashfs.Entry {
		var out []squashfs.Entry
		for _, e := range entries(t, record()) {
			if e.Path != p {
				out = append(out, e)
			}
		}
		return out
	}
	replace := func(p string, data string, mode fs.FileMode) []squashfs.Entry {
		return append(without(p), squashfs.Entry{Path: p, Data: []byte(data), Mode: mode})
	}
	deep := "/etc/prov/data/a/b/c/d/e/f/g"
	for _, tc := range []struct {
		name    string
		entries []squashfs.Entry
		err     error
	}{
		{"file outside the prefixes", with(squashfs.Entry{Path: "/etc/shadow", Mode: 0o644, Data: []byte("root::0:0:::::")}), inspect.ErrEntryPath},
		{"file at the root", with(squashfs.Entry{Path: "/evil", Mode: 0o644}), inspect.ErrEntryPath},
		{"directory outside", with(squashfs.Entry{Path: "/var/lib", Dir: true, Mode: 0o755}), inspect.ErrEntryPath},
		{"hidden data file", with(squashfs.Entry{Path: "/etc/prov/data/.profile", Mode: 0o644}), inspect.ErrEntryPath},
		{"data file too deep", with(squashfs.Entry{Path: deep + "/h/i", Mode: 0o644}), inspect.ErrEntryPath},
		{"file mode 0600", replace(imagespec.Hostname, "dev-1a2b3c4d5e\n", 0o600), inspect.ErrInodeMode},
		{"file mode 0755", replace(imagespec.Hostname, "dev-1a2b3c4d5e\n", 0o755), inspect.ErrInodeMode},
		{"directory mode 0777", with(squashfs.Entry{Path: "/etc/prov/data/d", Dir: true, Mode: 0o777}), inspect.ErrInodeMode},
		{"hostname missing", without(imagespec.Hostname), inspect.ErrFixedFiles},
		{"metadata missing", without(imagespec.Metadata), inspect.ErrFixedFiles},
		{"extension-release missing", without(imagespec.ExtensionRelease), inspect.ErrFixedFiles},
		{"another serial inside", replace(imagespec.SerialNumber, "0000000001\n", 0o644), inspect.ErrSerialNumber},
		{"another generation inside", replace(imagespec.Metadata, `{"format":1,"serial":"1a2b3c4d5e","generation":3,"issuedAt":"2026-11-01T12:00:00Z"}`+"\n", 0o644), inspect.ErrMetadata},
		{"metadata garbage", replace(imagespec.Metadata, "{", 0o644), inspect.ErrMetadata},
		// Its spelling (a member twice, an offset) is step 40, after the
		// inspection: the conformance suite's image.json cases.
		{"altered extension-release", replace(imagespec.ExtensionRelease, "ID=debian\n", 0o644), inspect.ErrExtensionRelease},
		{"hostname not a host name", replace(imagespec.Hostname, "Dev_1\n", 0o644), inspect.ErrFixedValues},
		{"machine-id all zero", replace(imagespec.MachineID, strings.Repeat("0", 32)+"\n", 0o644), inspect.ErrFixedValues},
		{"mqtt client id of two lines", replace(imagespec.MQTTClientID, "a\nb\n", 0o644), inspect.ErrFixedValues},
		{"data file over the size limit", with(squashfs.Entry{Path: "/etc/prov/data/big", Mode: 0o644, Data: make([]byte, imagespec.MaxFileSize+1)}), inspect.ErrFileTooLarge},
		{"more data files than allowed", with(dataFiles(imagespec.MaxDataFiles-1, 1)...), inspect.ErrDataLimits},
		{"more data than allowed", with(dataFiles(16, imagespec.MaxFileSize)...), inspect.ErrDataLimits},
	} {
		t.Run(tc.name, func(t *testing.T) {
			img, err := squashfs.Build(tc.entries, squashfs.Options{})
			if err != nil {
				t.Fatal(err)
			}
			_, err = run(img, expect())
			if !errors.Is(err, tc.err) {
				t.Fatalf("Inspect: %v; want %v", err, tc.err)
			}
			t.Logf("refused: %v", err)
		})
	}
	t.Run("statement of another generation", func(t *testing.T) {
		e := expect()
		e.Generation = 5
		if _, err := run(build(t, record()), e); !errors.Is(err, inspect.ErrMismatch) {
			t.Fatalf("Inspect: %v", err)
		}
	})
	t.Run("gzip-compressed image", func(t *testing.T) {
		img, err := squashfs.Build(entries(t, record()), squashfs.Options{Compression: squashfs.Gzip})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := run(img, expect()); err != nil {
			t.Fatalf("a zlib image of the same tree: %v", err)
		}
	})
}

// dataFiles returns n data files of size bytes each, besides the record's
// two.
func dataFiles(n, size int) []squashfs.Entry {
	var es []squashfs.Entry
	for i := range n {
		es = append(es, squashfs.Entry{Path: fmt.Sprintf("/etc/prov/data/many/f%03d", i), Mode: imagespec.FileMode, Data: bytes.Repeat([]byte{'x'}, size)})
	}
	return es
}

func TestRefusesBrokenBytes(t *testing.T) {
	good := build(t, record())
	for _, tc := range []struct {
		name string
		img  []byte
	}{
		{"empty", nil},
		{"superblock only", good[:96]},
		{"truncated", good[:1000]},
		{"not squashfs", bytes.Repeat([]byte{0x42}, 4096)},
		{"zeroed tables", append(append([]byte{}, good[:96]...), make([]byte, len(good)-96)...)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := run(tc.img, expect()); err == nil {
				t.Fatal("accepted")
			}
		})
	}
}

// mksquashfsImage packs a directory that setup fills with Debian's
// mksquashfs, as a device might be handed by a compromised or misconfigured
// build: symlinks, device nodes, setuid bits, other owners.
func mksquashfsImage(t testing.TB, setup func(root string), args ...string) []byte {
	t.Helper()
	bin := testenv.Tool(t, "mksquashfs", "install Debian's squashfs-tools")
	root := filepath.Join(t.TempDir(), "tree")
	files, err := record().Files(imagespec.DefaultRules())
	if err != nil {
		t.Fatal(err)
	}
	for p, c := range files {
		full := filepath.Join(root, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, c, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	setup(root)
	out := filepath.Join(t.TempDir(), "img")
	cmd := exec.Command(bin, append([]string{root, out, "-noappend", "-quiet", "-no-progress"}, args...)...)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("mksquashfs: %v\n%s", err, b)
	}
	img, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

func TestRefusesHostileImages(t *testing.T) {
	// The superblock core's writer makes in its zlib mode (flags 0x0210, no
	// time), so that each case is refused for its trick, not for its
	// superblock.
	plain := []string{"-no-fragments", "-no-exports", "-no-xattrs", "-no-duplicates", "-all-time", "0", "-mkfs-time", "0", "-all-root"}
	for _, tc := range []struct {
		name  string
		setup func(t *testing.T, root string)
		args  []string
		err   error
	}{
		{"symlink", func(t *testing.T, root string) { must(t, os.Symlink("/etc/shadow", root+"/etc/prov/data/link")) }, plain, inspect.ErrNotRegular},
		{"setuid file", func(t *testing.T, root string) {
			must(t, os.WriteFile(root+"/etc/prov/data/suid", []byte("x"), 0o644))
			must(t, os.Chmod(root+"/etc/prov/data/suid", os.ModeSetuid|0o644))
		}, plain, inspect.ErrBadMode},
		{"setgid directory", func(t *testing.T, root string) {
			must(t, os.Mkdir(root+"/etc/prov/data/sgid", 0o755))
			must(t, os.Chmod(root+"/etc/prov/data/sgid", os.ModeSetgid|0o755))
		}, plain, inspect.ErrBadMode},
		{"fifo", func(t *testing.T, root string) { must(t, syscall.Mkfifo(root+"/etc/prov/data/fifo", 0o644)) }, plain, inspect.ErrNotRegular},
		{"device node", func(t *testing.T, root string) {
			testenv.Root(t, "mknod needs root")
			must(t, syscall.Mknod(root+"/etc/prov/data/sda", syscall.S_IFBLK|0o644, 8<<8))
		}, plain, inspect.ErrNotRegular},
		{"file of another owner", func(t *testing.T, root string) {
			testenv.Root(t, "chown needs root")
			must(t, os.WriteFile(root+"/etc/prov/data/theirs", []byte("x"), 0o644))
			must(t, os.Chown(root+"/etc/prov/data/theirs", 1000, 1000))
		}, plain[:len(plain)-1], inspect.ErrBadOwner},
		{"fragments and export table (mksquashfs defaults)", func(*testing.T, string) {}, []string{"-all-root"}, inspect.ErrMalformed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			img := mksquashfsImage(t, func(root string) { tc.setup(t, root) }, tc.args...)
			_, err := run(img, expect())
			if !errors.Is(err, tc.err) {
				t.Fatalf("Inspect: %v; want %v", err, tc.err)
			}
			t.Logf("refused: %v", err)
		})
	}
	t.Run("control: mksquashfs of the same tree, no tricks", func(t *testing.T) {
		img := mksquashfsImage(t, func(string) {}, plain...)
		if _, err := run(img, expect()); err != nil {
			t.Fatalf("the plain mksquashfs image is refused, so the cases above prove little: %v", err)
		}
	})
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

var updateFuzz = flag.Bool("update-fuzz-corpus", false, "regenerate the seed corpus in testdata/fuzz")

// FuzzInspect: whatever the bytes, inspection returns (no panic, no crash)
// with memory bounded by the image size, and what it accepts keeps the
// contract. Seeds: a good image, its zlib twin, and every case of
// inspecttest (each refused by one check), besides testdata/fuzz.
//
// The seeds are whole images (up to ~1 MiB), so the engine's minimizing of
// a new interesting input takes its full -fuzzminimizetime (60 s by
// default) with no executions counted ("0/sec"): that is not a hang. Run
// with -fuzzminimizetime 2s.
func FuzzInspect(f *testing.F) {
	good := build(f, record())
	f.Add(good)
	gz, err := squashfs.Build(entries(f, record()), squashfs.Options{Compression: squashfs.Gzip})
	if err != nil {
		f.Fatal(err)
	}
	f.Add(gz)
	for _, c := range inspecttest.Cases() {
		img, err := c.Make(good)
		if err != nil {
			f.Fatal(err)
		}
		if len(img) <= 64<<10 { // not table-size's 1 MiB: the fuzzer would spend its time on it
			f.Add(img)
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) > imagespec.MaxImageSize {
			return
		}
		l, err := run(data, expect())
		if err != nil {
			return
		}
		for _, e := range l.Entries {
			if (e.Dir && e.Mode.Perm() != imagespec.DirMode) || (!e.Dir && e.Mode != imagespec.FileMode) {
				t.Fatalf("accepted %s with mode %v", e.Path, e.Mode)
			}
		}
	})
}

// TestUpdateFuzzCorpus writes the seed corpus: a valid image, its gzip
// twin, and mksquashfs images with a symlink, a setuid file and fragments.
func TestUpdateFuzzCorpus(t *testing.T) {
	if !*updateFuzz {
		t.Skip("run with -update-fuzz-corpus to regenerate testdata/fuzz")
	}
	gz, err := squashfs.Build(entries(t, record()), squashfs.Options{Compression: squashfs.Gzip})
	if err != nil {
		t.Fatal(err)
	}
	seeds := map[string][]byte{
		"valid":      build(t, record()),
		"valid-gzip": gz,
		"symlink": mksquashfsImage(t, func(root string) { must(t, os.Symlink("/x", root+"/etc/prov/data/l")) },
			"-no-fragments", "-no-exports", "-no-xattrs", "-all-root"),
		"setuid": mksquashfsImage(t, func(root string) {
			must(t, os.WriteFile(root+"/etc/prov/data/s", []byte("x"), 0o644))
			must(t, os.Chmod(root+"/etc/prov/data/s", os.ModeSetuid|0o644))
		}, "-no-fragments", "-no-exports", "-no-xattrs", "-all-root"),
		"fragments": mksquashfsImage(t, func(string) {}, "-all-root"),
	}
	dir := filepath.Join("testdata", "fuzz", "FuzzInspect")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, data := range seeds {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", data)), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}
