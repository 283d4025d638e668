// Package inspect is the device's pre-mount inspection of a provisioning
// image that has passed signature verification. It refuses, before the
// image is mounted, every image core's writer (core/imagebuild/squashfs)
// never makes and every image the kernel's squashfs would refuse to read:
// the superblock must be the writer's field by field, every table what the
// writer lays out, every file's size its stored data's, every directory
// entry its inode's type. And the tree may hold only what the imagespec
// contract allows (the fixed files and data files below the allowed
// prefixes), only directories (0755) and regular files (0644) owned by root,
// within the size limits, and its metadata and serial number must be the
// ones the signed statement names.
//
// A bounded parser of our own checks the bytes first (prescan.go); then
// github.com/CalebQ42/squashfs v1.4.1, an independent reader, walks the tree
// again for the contract's rules and reads the fixed files. Each refusal is
// one Check (errors.go), a sentinel error with a stable name; Checks lists
// them in the order they run, as docs/image-format.md does.
package inspect

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"path"
	"strings"

	"github.com/CalebQ42/squashfs"
	squashfslow "github.com/CalebQ42/squashfs/low"
	"github.com/CalebQ42/squashfs/low/inode"

	"github.com/fleetprov/prov/core/contract/imagespec"
	"github.com/fleetprov/prov/internal/untrusted"
)

// Expect is what the image must be: its rules, and the serial and
// generation of the statement it came with.
type Expect struct {
	Rules      imagespec.Rules
	Serial     string
	Generation uint64
}

// Entry is one inspected entry.
type Entry struct {
	Path string
	Dir  bool
	Mode fs.FileMode
	Size int64
}

// Listing is an inspected image.
type Listing struct {
	Entries  []Entry
	Metadata imagespec.ImageMetadata
}

// Inspect checks the image in r (size bytes). The error is the first check
// that fails (errors.Is(err, ErrFileSize), or errors.As for its Check). Any
// panic in the second reader is an ErrSecondReader, never a crash.
func Inspect(r io.ReaderAt, size int64, want Expect) (l *Listing, err error) {
	defer func() {
		if p := recover(); p != nil {
			l, err = nil, fmt.Errorf("%w: the reader failed: %v", ErrSecondReader, p)
		}
	}()
	if err := want.Rules.Validate(); err != nil {
		return nil, err
	}
	if size > imagespec.MaxImageSize {
		return nil, fmt.Errorf("%w: %d bytes, at most %d", ErrImageSize, size, imagespec.MaxImageSize)
	}
	if err := prescan(r, size, imagespec.MaxFileSize); err != nil {
		return nil, err
	}
	rdr, err := squashfs.NewReader(io.NewSectionReader(r, 0, size))
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrSecondReader, err)
	}
	w := &walker{rdr: &rdr, rules: want.Rules, files: map[string]bool{}}
	root := rdr.Low.Root
	if root.Inode.Type != inode.Dir || root.Inode.Perm != imagespec.DirMode {
		return nil, fmt.Errorf("%w: the root is type %d mode %04o", ErrSecondReader, root.Inode.Type, root.Inode.Perm)
	}
	if err := w.walk(root, "/", 0); err != nil {
		return nil, err
	}
	md, err := w.checkFixed(want)
	if err != nil {
		return nil, err
	}
	return &Listing{Entries: w.entries, Metadata: md}, nil
}

type walker struct {
	rdr     *squashfs.Reader
	rules   imagespec.Rules
	entries []Entry
	files   map[string]bool
	data    int   // data files
	total   int64 // bytes of data files
}

func (w *walker) walk(dir squashfslow.Directory, dirPath string, depth int) error {
	if depth > imagespec.MaxPathDepth {
		return fmt.Errorf("%w: %s is deeper than %d", ErrEntryPath, dirPath, imagespec.MaxPathDepth)
	}
	prev := ""
	for i, e := range dir.Entries {
		if e.Name == "" || e.Name == "." || e.Name == ".." || strings.ContainsAny(e.Name, "/\x00") || len(e.Name) > 255 {
			return fmt.Errorf("%w: %s holds an entry named %q", ErrSecondReader, dirPath, e.Name)
		}
		if i > 0 && e.Name <= prev {
			return fmt.Errorf("%w: %s lists %q after %q (not sorted, or twice)", ErrSecondReader, dirPath, e.Name, prev)
		}
		prev = e.Name
		p := path.Join(dirPath, e.Name)
		if len(w.entries) >= maxInodes {
			return fmt.Errorf("%w: more than %d entries", ErrSecondReader, maxInodes)
		}
		b, err := w.rdr.Low.BaseFromEntry(e)
		if err != nil {
			return fmt.Errorf("%w: %s: %w", ErrSecondReader, p, err)
		}
		uid, uerr := b.Uid(&w.rdr.Low)
		gid, gerr := b.Gid(&w.rdr.Low)
		if uerr != nil || gerr != nil || uid != 0 || gid != 0 {
			return fmt.Errorf("%w: %s", ErrSecondReader, p)
		}
		switch b.Inode.Type {
		case inode.Dir:
			if err := w.rules.CheckDir(p); err != nil {
				return fmt.Errorf("%w: %w", ErrEntryPath, err)
			}
			if b.Inode.Perm != imagespec.DirMode {
				return fmt.Errorf("%w: directory %s has mode %04o", ErrSecondReader, p, b.Inode.Perm)
			}
			w.entries = append(w.entries, Entry{Path: p, Dir: true, Mode: fs.FileMode(b.Inode.Perm) | fs.ModeDir})
			sub, err := b.ToDir(w.rdr.Low)
			if err != nil {
				return fmt.Errorf("%w: %s: %w", ErrSecondReader, p, err)
			}
			if err := w.walk(sub, p, depth+1); err != nil {
				return err
			}
		case inode.Fil:
			if err := w.checkFile(p, b); err != nil {
				return err
			}
		default:
			return fmt.Errorf("%w: %s has inode type %d", ErrSecondReader, p, b.Inode.Type)
		}
	}
	return nil
}

func (w *walker) checkFile(p string, b squashfslow.FileBase) error {
	if b.Inode.Perm != imagespec.FileMode {
		return fmt.Errorf("%w: file %s has mode %04o", ErrSecondReader, p, b.Inode.Perm)
	}
	size := int64(b.Inode.Size()) //nolint:gosec // prescan bounded it
	if !imagespec.IsFixed(p) {
		if err := w.rules.CheckDataPath(p); err != nil {
			return fmt.Errorf("%w: %w", ErrEntryPath, err)
		}
		w.data++
		w.total += size
		if w.data > imagespec.MaxDataFiles || w.total > imagespec.MaxTotalSize {
			return fmt.Errorf("%w: more than %d data files or %d bytes", ErrDataLimits, imagespec.MaxDataFiles, imagespec.MaxTotalSize)
		}
	}
	w.files[p] = true
	w.entries = append(w.entries, Entry{Path: p, Mode: fs.FileMode(b.Inode.Perm), Size: size})
	return nil
}

// checkFixed checks that the fixed files are there and agree with the
// statement.
func (w *walker) checkFixed(want Expect) (imagespec.ImageMetadata, error) {
	for _, f := range imagespec.FixedFiles {
		if !w.files[f] && f != imagespec.MachineID {
			return imagespec.ImageMetadata{}, fmt.Errorf("%w: %s", ErrFixedFiles, f)
		}
	}
	read := func(p string) ([]byte, error) {
		b, err := fs.ReadFile(w.rdr, strings.TrimPrefix(p, "/"))
		if err != nil {
			return nil, fmt.Errorf("%w: read %s: %w", ErrSecondReader, p, err)
		}
		return b, nil
	}
	serial, err := read(imagespec.SerialNumber)
	if err != nil {
		return imagespec.ImageMetadata{}, err
	}
	if string(serial) != want.Serial+"\n" {
		return imagespec.ImageMetadata{}, fmt.Errorf("%w: %s holds %s, the statement says %s", ErrSerialNumber, imagespec.SerialNumber, untrusted.Quote(string(serial)), want.Serial)
	}
	raw, err := read(imagespec.Metadata)
	if err != nil {
		return imagespec.ImageMetadata{}, err
	}
	md, err := imagespec.ParseMetadata(raw)
	if err != nil {
		return imagespec.ImageMetadata{}, fmt.Errorf("%w: %w", ErrMetadata, err)
	}
	if err := exactNames(raw); err != nil {
		return imagespec.ImageMetadata{}, fmt.Errorf("%w: %w", ErrMetadata, err)
	}
	// Its one spelling, byte for byte, is step 40 of docs/image-format.md
	// (install.Check), after the inspection: here it need only say which
	// device and generation it is for.
	if md.Serial != want.Serial || md.Generation != want.Generation {
		return imagespec.ImageMetadata{}, fmt.Errorf("%w: metadata names %s generation %d, the statement %s generation %d",
			ErrMetadata, md.Serial, md.Generation, want.Serial, want.Generation)
	}
	rel, err := read(imagespec.ExtensionRelease)
	if err != nil {
		return imagespec.ImageMetadata{}, err
	}
	if !bytes.Equal(rel, []byte(imagespec.ExtensionReleaseContent)) {
		return imagespec.ImageMetadata{}, fmt.Errorf("%w: unexpected %s", ErrExtensionRelease, imagespec.ExtensionRelease)
	}
	if err := w.checkValues(read); err != nil {
		return imagespec.ImageMetadata{}, err
	}
	return md, nil
}

// exactNames requires image.json's member names as JSON spells them (RFC
// 8259 compares names exactly): format, serial and generation present and
// no name but those and issuedAt. encoding/json, which ParseMetadata uses,
// matches names in any case, so "Serial" would name the serial for it and
// for no other reader (docs/image-format.md, section 6, check 46).
func exactNames(raw []byte) error {
	var members map[string]json.RawMessage
	if err := json.Unmarshal(raw, &members); err != nil {
		return fmt.Errorf("image metadata: %w", err)
	}
	for name := range members {
		switch name {
		case "format", "serial", "generation", "issuedAt":
		default:
			return fmt.Errorf("image metadata: member %s", untrusted.Quote(name))
		}
	}
	for _, name := range []string{"format", "serial", "generation"} {
		if _, ok := members[name]; !ok {
			return fmt.Errorf("image metadata: no member %q", name)
		}
	}
	return nil
}

// checkValues checks the fixed files that hold one value each: the value
// by its imagespec rule, then one newline, as the builder writes them.
func (w *walker) checkValues(read func(string) ([]byte, error)) error {
	for _, f := range []struct {
		path  string
		check func(string) error
	}{
		{imagespec.Hostname, imagespec.CheckHostname},
		{imagespec.MachineID, imagespec.CheckMachineID},
		{imagespec.MQTTClientID, func(s string) error { return imagespec.CheckMQTTID("mqtt client id", s) }},
		{imagespec.MQTTGroupID, func(s string) error { return imagespec.CheckMQTTID("mqtt group id", s) }},
	} {
		if !w.files[f.path] {
			continue // machine-id may be absent; the others were checked present
		}
		b, err := read(f.path)
		if err != nil {
			return err
		}
		v, ok := strings.CutSuffix(string(b), "\n")
		if !ok {
			return fmt.Errorf("%w: %s does not end with a newline", ErrFixedValues, f.path)
		}
		if err := f.check(v); err != nil {
			return fmt.Errorf("%w: %s: %w", ErrFixedValues, f.path, err)
		}
	}
	return nil
}
