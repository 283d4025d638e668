// Package tamper makes images that one check of the device's pre-mount
// inspection (deviceclient/inspect, docs/image-format.md section 6) refuses,
// each from a good image core's builder wrote, changed at the byte level.
// The conformance suite (core/imagebuild/conformance) signs each into a
// bundle, one case per Case; deviceclient/inspect/inspecttest ties each to
// its *inspect.Check for inspect's own tests. It lives under core, naming
// checks by their stable names rather than importing deviceclient/inspect,
// because the suite's generator is linked into prov-core, which links
// nothing of the device's.
//
// It reads only what core builds: squashfs 4.0 with every block stored
// uncompressed (squashfs.Options{}, the default), metadata blocks full but
// the last. A Case's Make refuses any other input.
package tamper

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/fleetprov/prov/core/contract/imagespec"
)

// ErrNotBuilderImage is returned for an input that is not an uncompressed
// image as core's builder writes it.
var ErrNotBuilderImage = errors.New("not an uncompressed image of core's builder")

// Case is one image the inspection refuses.
type Case struct {
	// Name is a stable, file-name-safe name of the case
	// ("superblock-block-size-64k").
	Name string
	// Check is the name of the check that refuses it, as
	// docs/image-format.md section 6 and inspect.Check.Name spell it.
	Check string
	// Make returns the changed copy of good, which must be an image core
	// built (imagebuild.Build) of a small record, /etc/hostname and
	// /etc/mqtt-client-id in one inode block; good is not modified.
	Make func(good []byte) ([]byte, error)
}

// Cases returns every case, in the order of inspect.Checks (several for
// some checks, none for the few no change of a good image's bytes can reach:
// content-size, data-limits, fixed-files, second-reader).
func Cases() []Case {
	return []Case{
		{"image-size", "image-size", edit(func(im *Image) error {
			im.b = append(im.b, make([]byte, imagespec.MaxImageSize+4096-len(im.b))...)
			return nil
		})},
		{"superblock-missing", "superblock-missing", func(good []byte) ([]byte, error) { return bytes.Clone(good[:min(64, len(good))]), nil }},
		{"superblock-magic", "superblock-magic", sb16(0, 0x7348)},
		{"superblock-version-4.1", "superblock-version", sb16(30, 1)},
		{"superblock-compression-xz", "superblock-compression", sb16(20, 4)},
		{"superblock-block-size-64k", "superblock-block-size", BlockSize64K},
		{"superblock-block-log", "superblock-block-size", sb16(22, 16)},
		{"superblock-flags-duplicates", "superblock-flags", FlagDuplicates},
		{"superblock-flags-compressed-data", "superblock-flags", edit(func(im *Image) error { im.put16(24, im.u16(24)&^0x0002); return nil })},
		{"superblock-time", "superblock-time", sb32(8, 1)},
		{"superblock-fragments", "superblock-fragments", sb32(16, 1)},
		{"superblock-ids", "superblock-ids", sb16(26, 2)},
		{"superblock-inodes-over-limit", "superblock-inodes", sb32(4, 1025)},
		{"superblock-export-table", "superblock-tables", edit(func(im *Image) error { im.put64(88, im.u64(64)); return nil })},
		{"superblock-tables-out-of-order", "superblock-tables", edit(func(im *Image) error { im.put64(72, im.u64(64)); return nil })},
		{"image-length-extra-block", "image-length", edit(func(im *Image) error { im.b = append(im.b, make([]byte, 4096)...); return nil })},
		{"image-length-padding-not-zero", "image-length", edit(func(im *Image) error {
			if im.pos(40) == len(im.b) {
				return fmt.Errorf("%w: no padding", ErrNotBuilderImage)
			}
			im.b[len(im.b)-1] = 1
			return nil
		})},
		{"id-table-index", "id-table", edit(func(im *Image) error { im.put64(im.pos(48), im.u64(80)+1); return nil })},
		{"id-root", "id-root", edit(func(im *Image) error { im.put32(im.pos(80)+2, 1000); return nil })},
		{"metadata-block-compressed", "metadata-block", edit(func(im *Image) error {
			at := im.pos(64)
			im.put16(at, im.u16(at)&^0x8000)
			return nil
		})},
		{"table-size", "table-size", edit(func(im *Image) error { return im.grow(false, 1<<20) })},
		{"inode-type-symlink", "inode-type", inode("/etc/hostname", 0, 3)},
		{"inode-mode-setuid", "inode-mode", inode("/etc/hostname", 2, 0o4644)},
		{"inode-mode-0600", "inode-mode", inode("/etc/hostname", 2, 0o600)},
		{"inode-mode-directory-0700", "inode-mode", inode("/etc/prov", 2, 0o700)},
		{"inode-owner", "inode-owner", inode("/etc/hostname", 4, 1)},
		{"inode-time", "inode-time", inode32("/etc/hostname", 8, 1)},
		{"inode-number-twice", "inode-number", edit(func(im *Image) error {
			return im.setInode32("/etc/hostname", 12, im.inodeNumber("/etc/serial-number"))
		})},
		{"inode-number-zero", "inode-number", inode32("/etc/hostname", 12, 0)},
		{"directory-inode-link-count", "directory-inode", inode32("/etc/prov", 20, 1)},
		{"directory-inode-listing-outside", "directory-inode", inode("/etc/prov", 24, 0xffff)},
		{"file-fragment", "file-fragment", inode32("/etc/hostname", 20, 0)},
		{"file-too-large", "file-too-large", inode32("/etc/hostname", 28, imagespec.MaxFileSize+1)},
		{"file-blocks-compressed", "file-blocks", edit(func(im *Image) error {
			w, err := im.inode32("/etc/hostname", 32)
			if err != nil {
				return err
			}
			return im.setInode32("/etc/hostname", 32, w&^(1<<24))
		})},
		{"file-blocks-outside", "file-blocks", edit(func(im *Image) error { return im.setInode32("/etc/hostname", 16, 10) })},
		{"file-size-larger", "file-size", FileSizeLarger},
		{"file-size-smaller", "file-size", edit(func(im *Image) error { return im.addInode32("/etc/hostname", 28, -1) })},
		{"inode-table-end-count", "inode-table-end", edit(func(im *Image) error { im.put32(4, im.u32(4)+1); return nil })},
		{"inode-table-end-trailing", "inode-table-end", edit(func(im *Image) error { return im.grow(true, 4) })},
		{"data-layout", "data-layout", edit(func(im *Image) error { return im.addInode32("/etc/hostname", 16, 1) })},
		{"root-inode-file", "root-inode", edit(func(im *Image) error {
			e := im.entries["/etc/hostname"]
			im.put64(32, uint64(e.inode/metaSize*(metaSize+2))<<16|uint64(e.inode%metaSize)) //nolint:gosec // positions in a small image
			return nil
		})},
		{"root-inode-parent", "root-inode", inode32("/", 28, 1)},
		{"directory-listing-count", "directory-listing", edit(func(im *Image) error { return im.putDir32(im.entries["/etc"].listing, 300-1) })},
		{"dirent-inode-number", "dirent-inode", dirent("/etc/hostname", 2, 1)},
		{"dirent-inode-offset", "dirent-inode", dirent("/etc/hostname", 0, 1)},
		{"dirent-type-file-as-directory", "dirent-type", DirentType},
		{"dirent-type-directory-as-file", "dirent-type", direntSet("/etc/prov", 4, 2)},
		{"dirent-name-slash", "dirent-name", edit(func(im *Image) error { return im.putDirByte(im.entries["/etc/hostname"].dirent+8, '/') })},
		{"dirent-name-unsorted", "dirent-name", edit(func(im *Image) error { return im.putDirByte(im.entries["/etc/hostname"].dirent+8, 'z') })},
		{"link-hard", "link", edit(func(im *Image) error {
			// /etc/mqtt-client-id's entry names /etc/hostname's inode; both
			// are in /etc's first header, whose block both inodes share.
			h, c := im.entries["/etc/hostname"], im.entries["/etc/mqtt-client-id"]
			if h.inode/metaSize != c.inode/metaSize {
				return fmt.Errorf("%w: the two inodes are in different blocks", ErrNotBuilderImage)
			}
			for i := range 4 {
				if err := im.putDirByte(c.dirent+i, im.dirByte(h.dirent+i)); err != nil {
					return err
				}
			}
			return nil
		})},
		{"parent", "parent", edit(func(im *Image) error { return im.setInode32("/etc/prov", 28, im.inodeNumber("/etc/prov")) })},
		{"link-count", "link-count", edit(func(im *Image) error { return im.addInode32("/etc/prov", 20, 1) })},
		{"unreachable", "unreachable", inode("/etc/extension-release.d", 24, 3)},
		{"directory-table-layout", "directory-table-layout", edit(func(im *Image) error { return im.grow(false, 4) })},
		{"entry-path", "entry-path", edit(func(im *Image) error {
			e := im.entries["/etc/hostname"]
			return im.putDirByte(e.dirent+8+len("hostname")-1, 'f') // /etc/hostnamf, still sorted
		})},
		{"serial-number", "serial-number", content("/etc/serial-number", func(b []byte) int { return 0 })},
		{"metadata-generation", "metadata", content(imagespec.Metadata, func(b []byte) int {
			return bytes.Index(b, []byte(`"generation":`)) + len(`"generation":`)
		})},
		{"extension-release", "extension-release", content(imagespec.ExtensionRelease, func(b []byte) int { return 0 })},
		{"fixed-file-values-hostname", "fixed-file-values", content(imagespec.Hostname, func(b []byte) int { return 0 })},
		{"fixed-file-values-newline", "fixed-file-values", content(imagespec.MQTTGroupID, func(b []byte) int { return len(b) - 1 })},
	}
}

// BlockSize64K sets the block size to 64 KiB and block_log to 16, as
// mksquashfs -b 65536 would: consistent, and the kernel mounts it, but
// core's writer never makes it (an issue 14 finding).
func BlockSize64K(good []byte) ([]byte, error) {
	return edit(func(im *Image) error {
		im.put32(12, 64<<10)
		im.put16(22, 16)
		return nil
	})(good)
}

// FlagDuplicates sets the superblock flag DUPLICATES (0x0040), which
// mksquashfs sets by default and core's writer never (an issue 14 finding).
func FlagDuplicates(good []byte) ([]byte, error) {
	return edit(func(im *Image) error { im.put16(24, im.u16(24)|0x0040); return nil })(good)
}

// FileSizeLarger makes /etc/hostname's inode say one byte more than its
// data holds: the kernel mounts the image and fails reading the file with
// EIO (an issue 14 finding).
func FileSizeLarger(good []byte) ([]byte, error) {
	return edit(func(im *Image) error { return im.addInode32("/etc/hostname", 28, 1) })(good)
}

// DirentType makes /etc's entry for hostname say it is a directory while
// its inode is a regular file (an issue 14 finding).
func DirentType(good []byte) ([]byte, error) { return direntSet("/etc/hostname", 4, 1)(good) }

const (
	sbSize   = 96
	metaSize = 8192
)

// Image is a parsed builder image, being changed.
type Image struct {
	b          []byte
	inodeTable uint64 // on disk
	dirTable   uint64
	entries    map[string]*entry // by absolute path; "/" is the root
}

// entry is where one path's inode and directory entry are, as positions in
// the decoded inode and directory tables.
type entry struct {
	inode   int
	dirent  int // -1 for the root
	dir     bool
	listing int // directories: the listing's position
	blocks  uint32
}

func edit(f func(*Image) error) func([]byte) ([]byte, error) {
	return func(good []byte) ([]byte, error) {
		im, err := Parse(good)
		if err != nil {
			return nil, err
		}
		if err := f(im); err != nil {
			return nil, err
		}
		return im.b, nil
	}
}

func sb16(off int, v uint16) func([]byte) ([]byte, error) {
	return edit(func(im *Image) error { im.put16(off, v); return nil })
}

func sb32(off int, v uint32) func([]byte) ([]byte, error) {
	return edit(func(im *Image) error { im.put32(off, v); return nil })
}

// inode sets a 16-bit field of a path's inode; inode32 a 32-bit one.
func inode(p string, off int, v uint16) func([]byte) ([]byte, error) {
	return edit(func(im *Image) error { return im.setInode(p, off, binary.LittleEndian.AppendUint16(nil, v)) })
}

func inode32(p string, off int, v uint32) func([]byte) ([]byte, error) {
	return edit(func(im *Image) error { return im.setInode32(p, off, v) })
}

// dirent adds to a 16-bit field of a path's directory entry; direntSet
// sets it.
func dirent(p string, off int, delta int) func([]byte) ([]byte, error) {
	return edit(func(im *Image) error {
		e := im.entries[p]
		if e == nil || e.dirent < 0 {
			return fmt.Errorf("%w: no entry for %s", ErrNotBuilderImage, p)
		}
		v := uint16((int(im.dirByte(e.dirent+off)) | int(im.dirByte(e.dirent+off+1))<<8) + delta) //nolint:gosec // wraps on purpose
		return im.putDir16(e.dirent+off, v)
	})
}

func direntSet(p string, off int, v uint16) func([]byte) ([]byte, error) {
	return edit(func(im *Image) error {
		e := im.entries[p]
		if e == nil || e.dirent < 0 {
			return fmt.Errorf("%w: no entry for %s", ErrNotBuilderImage, p)
		}
		return im.putDir16(e.dirent+off, v)
	})
}

// content changes one byte of a file's data, at the offset at picks: a
// digit to another digit, anything else to 'X'.
func content(p string, at func([]byte) int) func([]byte) ([]byte, error) {
	return contentSet(p, at, 0)
}

// contentSet sets one byte of a file's data to c; 0 picks as content does.
func contentSet(p string, at func([]byte) int, c byte) func([]byte) ([]byte, error) {
	return edit(func(im *Image) error {
		e := im.entries[p]
		if e == nil || e.dir || e.blocks == 0 {
			return fmt.Errorf("%w: no data for %s", ErrNotBuilderImage, p)
		}
		start, err := im.inode32(p, 16)
		if err != nil {
			return err
		}
		size, err := im.inode32(p, 28)
		if err != nil {
			return err
		}
		data := im.b[start : start+size]
		i := at(data)
		if i < 0 || i >= len(data) {
			return fmt.Errorf("%w: %s has no such byte", ErrNotBuilderImage, p)
		}
		switch old := data[i]; {
		case c != 0:
			data[i] = c
		case old >= '0' && old <= '8':
			data[i] = old + 1
		case old == '9':
			data[i] = '8'
		default:
			data[i] = 'X'
		}
		return nil
	})
}

// Parse reads an uncompressed builder image. The returned Image works on a
// copy.
func Parse(good []byte) (*Image, error) {
	le := binary.LittleEndian
	if len(good) < sbSize || le.Uint32(good) != 0x73717368 || le.Uint16(good[24:])&0x0003 != 0x0003 {
		return nil, ErrNotBuilderImage
	}
	im := &Image{b: bytes.Clone(good), inodeTable: le.Uint64(good[64:]), dirTable: le.Uint64(good[72:]), entries: map[string]*entry{}}
	inodes, err := im.decode(im.inodeTable, im.dirTable)
	if err != nil {
		return nil, err
	}
	dirs, err := im.decode(im.dirTable, le.Uint64(good[80:]))
	if err != nil {
		return nil, err
	}
	ref := le.Uint64(good[32:])
	root := int(ref>>16)/(metaSize+2)*metaSize + int(ref&0xffff) //nolint:gosec // a small image
	if err := im.walk(inodes, dirs, "/", root, -1, 0); err != nil {
		return nil, err
	}
	return im, nil
}

// decode strips the headers of uncompressed metadata blocks in [start, end).
func (im *Image) decode(start, end uint64) ([]byte, error) {
	var out []byte
	for pos := start; pos < end; {
		if pos+2 > uint64(len(im.b)) {
			return nil, ErrNotBuilderImage
		}
		h := binary.LittleEndian.Uint16(im.b[pos:])
		n := uint64(h &^ 0x8000)
		if h&0x8000 == 0 || pos+2+n > end || (pos+2+n < end && n != metaSize) {
			return nil, fmt.Errorf("%w: metadata block at %d", ErrNotBuilderImage, pos)
		}
		out = append(out, im.b[pos+2:pos+2+n]...)
		pos += 2 + n
	}
	return out, nil
}

func (im *Image) walk(inodes, dirs []byte, p string, ino, dirent, depth int) error {
	le := binary.LittleEndian
	if depth > 16 || ino+32 > len(inodes) {
		return fmt.Errorf("%w: %s", ErrNotBuilderImage, p)
	}
	e := &entry{inode: ino, dirent: dirent}
	im.entries[p] = e
	switch le.Uint16(inodes[ino:]) {
	case 2:
		e.blocks = (le.Uint32(inodes[ino+28:]) + 128<<10 - 1) / (128 << 10)
		return nil
	case 1:
	default:
		return fmt.Errorf("%w: %s has inode type %d", ErrNotBuilderImage, p, le.Uint16(inodes[ino:]))
	}
	e.dir = true
	start, size, off := le.Uint32(inodes[ino+16:]), int(le.Uint16(inodes[ino+24:]))-3, le.Uint16(inodes[ino+26:])
	e.listing = int(start)/(metaSize+2)*metaSize + int(off)
	l := dirs[e.listing:min(len(dirs), e.listing+max(size, 0))]
	for i := 0; i+12 <= len(l); {
		count, block := int(le.Uint32(l[i:]))+1, int(le.Uint32(l[i+4:]))
		i += 12
		for range count {
			if i+8 > len(l) {
				return fmt.Errorf("%w: listing of %s", ErrNotBuilderImage, p)
			}
			nlen := int(le.Uint16(l[i+6:])) + 1
			if i+8+nlen > len(l) {
				return fmt.Errorf("%w: listing of %s", ErrNotBuilderImage, p)
			}
			child := block/(metaSize+2)*metaSize + int(le.Uint16(l[i:]))
			name := string(l[i+8 : i+8+nlen])
			if err := im.walk(inodes, dirs, strings.TrimSuffix(p, "/")+"/"+name, child, e.listing+i, depth+1); err != nil {
				return err
			}
			i += 8 + nlen
		}
	}
	return nil
}

// inodeAt and dirAt map a position in a decoded table to the image's byte.
func (im *Image) inodeAt(pos int) int { return at(im.inodeTable, pos) }
func (im *Image) dirAt(pos int) int   { return at(im.dirTable, pos) }

func at(table uint64, pos int) int {
	return int(table) + pos/metaSize*(metaSize+2) + 2 + pos%metaSize //nolint:gosec // a small image
}

// pos reads a 64-bit superblock field that holds a position in the image.
func (im *Image) pos(field int) int { return int(im.u64(field)) } //nolint:gosec // a small image

func (im *Image) u16(off int) uint16 { return binary.LittleEndian.Uint16(im.b[off:]) }
func (im *Image) u32(off int) uint32 { return binary.LittleEndian.Uint32(im.b[off:]) }
func (im *Image) u64(off int) uint64 { return binary.LittleEndian.Uint64(im.b[off:]) }

func (im *Image) put16(off int, v uint16) { binary.LittleEndian.PutUint16(im.b[off:], v) }
func (im *Image) put32(off int, v uint32) { binary.LittleEndian.PutUint32(im.b[off:], v) }
func (im *Image) put64(off int, v uint64) { binary.LittleEndian.PutUint64(im.b[off:], v) }

func (im *Image) inode32(p string, off int) (uint32, error) {
	e, ok := im.entries[p]
	if !ok {
		return 0, fmt.Errorf("%w: no %s", ErrNotBuilderImage, p)
	}
	var b [4]byte
	for i := range b {
		b[i] = im.b[im.inodeAt(e.inode+off+i)]
	}
	return binary.LittleEndian.Uint32(b[:]), nil
}

func (im *Image) setInode32(p string, off int, v uint32) error {
	return im.setInode(p, off, binary.LittleEndian.AppendUint32(nil, v))
}

// setInode writes b at offset off of a path's inode.
func (im *Image) setInode(p string, off int, b []byte) error {
	e, ok := im.entries[p]
	if !ok {
		return fmt.Errorf("%w: no %s", ErrNotBuilderImage, p)
	}
	for i, c := range b {
		im.b[im.inodeAt(e.inode+off+i)] = c
	}
	return nil
}

func (im *Image) addInode32(p string, off int, delta int32) error {
	v, err := im.inode32(p, off)
	if err != nil {
		return err
	}
	return im.setInode32(p, off, uint32(int64(v)+int64(delta))) //nolint:gosec // wraps on purpose
}

func (im *Image) inodeNumber(p string) uint32 {
	v, _ := im.inode32(p, 12) //nolint:errcheck // callers name paths every builder image has; a missing one fails the case's check
	return v
}

func (im *Image) dirByte(pos int) byte { return im.b[im.dirAt(pos)] }

func (im *Image) putDirByte(pos int, c byte) error {
	if at := im.dirAt(pos); at < int(im.dirTable) || at >= len(im.b) { //nolint:gosec // a small image
		return fmt.Errorf("%w: directory table position %d", ErrNotBuilderImage, pos)
	}
	im.b[im.dirAt(pos)] = c
	return nil
}

func (im *Image) putDir16(pos int, v uint16) error {
	return im.putDir(pos, binary.LittleEndian.AppendUint16(nil, v))
}

func (im *Image) putDir32(pos int, v uint32) error {
	return im.putDir(pos, binary.LittleEndian.AppendUint32(nil, v))
}

func (im *Image) putDir(pos int, b []byte) error {
	for i, c := range b {
		if err := im.putDirByte(pos+i, c); err != nil {
			return err
		}
	}
	return nil
}

// grow appends n zero bytes to the decoded inode table (inodes) or
// directory table, keeping every block but the last full, and moves what
// follows: the tables after it, the id index, bytes_used and the padding.
func (im *Image) grow(inodes bool, n int) error {
	start, end := im.dirTable, im.u64(80)
	if inodes {
		start, end = im.inodeTable, im.dirTable
	}
	decoded, err := im.decode(start, end)
	if err != nil {
		return err
	}
	decoded = append(decoded, make([]byte, n)...)
	var table []byte
	for b := range slices.Chunk(decoded, metaSize) {
		table = binary.LittleEndian.AppendUint16(table, uint16(len(b))|0x8000) //nolint:gosec // at most 8192
		table = append(table, b...)
	}
	shift := uint64(len(table)) - (end - start)
	used := im.u64(40)
	out := append(append(bytes.Clone(im.b[:start]), table...), im.b[end:used]...)
	im.b = out
	for _, off := range []int{40, 48, 72, 80} { // bytes_used, id table, directory table, fragment table
		if v := im.u64(off); v >= end {
			im.put64(off, v+shift)
		}
	}
	if idx := im.pos(48); idx+8 <= len(im.b) {
		im.put64(idx, im.u64(idx)+shift)
	}
	if rem := len(im.b) % 4096; rem != 0 {
		im.b = append(im.b, make([]byte, 4096-rem)...)
	}
	return nil
}
