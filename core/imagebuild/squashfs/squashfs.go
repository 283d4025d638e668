// Package squashfs writes SquashFS 4.0 images of small trees, in memory and
// deterministically: the same entries and options give the same bytes, on
// any machine, at any time.
//
// We own this writer because no Go library writes squashfs deterministically
// in memory (go-diskfs stages files on disk; github.com/CalebQ42/squashfs
// only reads), and running mksquashfs costs ~7 ms of CPU per image. It
// writes only what provisioning images need: directories and regular files,
// owner root:root, one fixed timestamp, entries sorted by name, no xattrs,
// no fragments, no export table. Every data and metadata block is stored
// uncompressed (Compression None, the default: at a few KiB padded to 4 KiB
// compression does not pay, and uncompressed bytes do not depend on a
// compressor's implementation) or zlib-compressed where that is smaller
// (Compression Gzip). The kernel's squashfs driver always has zlib.
//
// The on-disk format is the kernel's (Documentation/filesystems/squashfs.rst
// and fs/squashfs/squashfs_fs.h); field names below follow it.
package squashfs

import (
	"bytes"
	"compress/zlib"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"slices"
	"strings"
	"sync"
)

// Compression selects how blocks are stored.
type Compression int

// Compressions.
const (
	// None stores every block uncompressed.
	None Compression = iota
	// Gzip stores a block zlib-compressed (level 9) when that is smaller.
	Gzip
)

// Options of an image. The zero value is valid and gives the defaults.
type Options struct {
	Compression Compression
	// BlockSize is the data block size, a power of two from 4 KiB to 1 MiB;
	// zero means 128 KiB.
	BlockSize uint32
	// ModTime is the one timestamp of every inode and of the image; zero
	// means 1970-01-01, which is what reproducible builds use.
	ModTime uint32
	// PadTo pads the image with zeros to a multiple of this many bytes (loop
	// devices want 4 KiB); zero means 4096, negative means no padding.
	PadTo int
}

// Entry is a directory or regular file of the tree. Parent directories are
// implied (mode 0755) unless given.
type Entry struct {
	// Path is slash-separated and relative ("etc/hostname"); a leading "/"
	// is allowed and ignored.
	Path string
	Dir  bool
	// Mode holds the permission bits only (at most 0777).
	Mode fs.FileMode
	// Data is a regular file's contents.
	Data []byte
}

// Errors.
var (
	ErrBadPath  = errors.New("bad path")
	ErrBadEntry = errors.New("bad entry")
)

// On-disk constants.
const (
	magic          = 0x73717368
	superblockSize = 96
	metadataSize   = 8192
	compZlib       = 1
	invalid64      = ^uint64(0)
	invalidFrag    = ^uint32(0)

	typeDir  = 1
	typeFile = 2

	flagUncompressedInodes    = 0x0001
	flagUncompressedData      = 0x0002
	flagUncompressedFragments = 0x0008
	flagNoFragments           = 0x0010
	flagNoXattrs              = 0x0200
	flagUncompressedIDs       = 0x0800

	metaUncompressed  = 0x8000 // in a metadata block's 16-bit header
	blockUncompressed = 1 << 24

	maxNameLen     = 255 // NAME_MAX; squashfs itself allows 256
	maxDirHeader   = 256 // entries per directory header
	defaultBlock   = 128 << 10
	defaultPadding = 4096
)

type node struct {
	name     string
	dir      bool
	given    bool // named by an entry, not only implied by a descendant
	mode     uint16
	data     []byte
	children []*node

	number     uint32 // inode number, 1..count
	inodeBlock uint32 // start of the inode's metadata block, relative to the inode table
	inodeOff   uint16 // offset of the inode within that block, uncompressed

	blocksStart uint32   // files: disk offset of the first data block
	blockSizes  []uint32 // files: on-disk size of each block, with the uncompressed bit
}

// Build returns the image of the tree.
func Build(entries []Entry, opts Options) ([]byte, error) {
	o, err := opts.normalise()
	if err != nil {
		return nil, err
	}
	root, err := buildTree(entries)
	if err != nil {
		return nil, err
	}
	w := &writer{opts: o}
	return w.write(root)
}

type options struct {
	Options
	blockLog uint16
}

func (o Options) normalise() (options, error) {
	if o.BlockSize == 0 {
		o.BlockSize = defaultBlock
	}
	if o.PadTo == 0 {
		o.PadTo = defaultPadding
	}
	if o.Compression != None && o.Compression != Gzip {
		return options{}, fmt.Errorf("squashfs: unknown compression %d", o.Compression)
	}
	var log uint16
	for ; log < 32 && uint32(1)<<log < o.BlockSize; log++ {
	}
	if uint32(1)<<log != o.BlockSize || log < 12 || log > 20 {
		return options{}, fmt.Errorf("squashfs: block size %d is not a power of two from 4 KiB to 1 MiB", o.BlockSize)
	}
	return options{Options: o, blockLog: log}, nil
}

// buildTree checks the entries and makes the sorted tree.
func buildTree(entries []Entry) (*node, error) {
	root := &node{dir: true, mode: 0o755}
	for _, e := range entries {
		parts, err := splitPath(e.Path)
		if err != nil {
			return nil, err
		}
		if e.Mode&^fs.ModePerm != 0 {
			return nil, fmt.Errorf("%w: %s: mode %v has bits beyond rwx (setuid, setgid, sticky or a type)", ErrBadEntry, e.Path, e.Mode)
		}
		if e.Dir && len(e.Data) > 0 {
			return nil, fmt.Errorf("%w: %s: a directory has no data", ErrBadEntry, e.Path)
		}
		if len(parts) == 0 {
			if !e.Dir {
				return nil, fmt.Errorf("%w: the root must be a directory", ErrBadEntry)
			}
			root.mode = uint16(e.Mode)
			continue
		}
		n := root
		for i, name := range parts {
			last := i == len(parts)-1
			child := n.child(name)
			switch {
			case child == nil:
				child = &node{name: name, dir: !last || e.Dir, mode: 0o755}
				n.children = append(n.children, child)
			case last && child.dir && e.Dir && !child.given:
				// an implied parent, now given explicitly
			case last:
				return nil, fmt.Errorf("%w: %s given twice", ErrBadEntry, e.Path)
			case !child.dir:
				return nil, fmt.Errorf("%w: %s: %s is a file, not a directory", ErrBadEntry, e.Path, strings.Join(parts[:i+1], "/"))
			}
			if last {
				child.mode = uint16(e.Mode)
				child.data = e.Data
				child.given = true
			}
			n = child
		}
	}
	root.sort()
	return root, nil
}

func (n *node) child(name string) *node {
	for _, c := range n.children {
		if c.name == name {
			return c
		}
	}
	return nil
}

func (n *node) sort() {
	slices.SortFunc(n.children, func(a, b *node) int { return strings.Compare(a.name, b.name) })
	for _, c := range n.children {
		if c.dir {
			c.sort()
		}
	}
}

func splitPath(p string) ([]string, error) {
	s := strings.TrimPrefix(p, "/")
	if s == "" {
		return nil, nil
	}
	parts := strings.Split(s, "/")
	for _, name := range parts {
		switch {
		case name == "":
			return nil, fmt.Errorf("%w: %q has an empty name", ErrBadPath, p)
		case name == "." || name == "..":
			return nil, fmt.Errorf("%w: %q has a %q component", ErrBadPath, p, name)
		case len(name) > maxNameLen:
			return nil, fmt.Errorf("%w: %q has a name longer than %d bytes", ErrBadPath, p, maxNameLen)
		case strings.IndexByte(name, 0) >= 0:
			return nil, fmt.Errorf("%w: %q contains NUL", ErrBadPath, p)
		}
	}
	return parts, nil
}

type writer struct {
	opts    options
	scratch []byte // one inode or directory entry being encoded
	out     []byte // the image so far
	inodes  metaWriter
	dirs    metaWriter
	count   uint32
}

func (w *writer) write(root *node) ([]byte, error) {
	w.inodes.gzip = w.opts.Compression == Gzip
	w.dirs.gzip = w.inodes.gzip
	w.out = make([]byte, superblockSize, 4096)
	w.scratch = make([]byte, 0, 512)
	// A provisioning image's tables are well under 1 KiB each.
	w.inodes.cur, w.inodes.out = make([]byte, 0, 1024), make([]byte, 0, 1024)
	w.dirs.cur, w.dirs.out = make([]byte, 0, 1024), make([]byte, 0, 1024)

	// Inode numbers first (post-order: children before parents, the root
	// last), because a directory's inode names its parent's number.
	w.number(root)
	if err := w.writeData(root); err != nil {
		return nil, err
	}
	if err := w.writeInodes(root, w.count+1); err != nil {
		return nil, err
	}
	inodeTable := uint64(len(w.out))
	w.out = append(w.out, w.inodes.finish()...)
	dirTable := uint64(len(w.out))
	w.out = append(w.out, w.dirs.finish()...)
	fragTable := uint64(len(w.out)) // empty: no fragments

	// The id table: one id, 0 (root), in one metadata block, then the
	// index of that block.
	var ids metaWriter
	ids.gzip = w.inodes.gzip
	ids.write(make([]byte, 4)) // id 0: root
	idBlock := uint64(len(w.out))
	w.out = append(w.out, ids.finish()...)
	idTable := uint64(len(w.out))
	w.out = binary.LittleEndian.AppendUint64(w.out, idBlock)
	bytesUsed := uint64(len(w.out))

	flags := uint16(flagNoFragments | flagNoXattrs)
	if w.opts.Compression == None {
		flags |= flagUncompressedInodes | flagUncompressedData | flagUncompressedFragments | flagUncompressedIDs
	}
	sb := w.out[:superblockSize]
	binary.LittleEndian.PutUint32(sb[0:], magic)
	binary.LittleEndian.PutUint32(sb[4:], w.count)
	binary.LittleEndian.PutUint32(sb[8:], w.opts.ModTime)
	binary.LittleEndian.PutUint32(sb[12:], w.opts.BlockSize)
	binary.LittleEndian.PutUint32(sb[16:], 0) // fragment entries
	binary.LittleEndian.PutUint16(sb[20:], compZlib)
	binary.LittleEndian.PutUint16(sb[22:], w.opts.blockLog)
	binary.LittleEndian.PutUint16(sb[24:], flags)
	binary.LittleEndian.PutUint16(sb[26:], 1) // id count
	binary.LittleEndian.PutUint16(sb[28:], 4) // version 4.0
	binary.LittleEndian.PutUint16(sb[30:], 0)
	binary.LittleEndian.PutUint64(sb[32:], uint64(root.inodeBlock)<<16|uint64(root.inodeOff))
	binary.LittleEndian.PutUint64(sb[40:], bytesUsed)
	binary.LittleEndian.PutUint64(sb[48:], idTable)
	binary.LittleEndian.PutUint64(sb[56:], invalid64) // xattr table
	binary.LittleEndian.PutUint64(sb[64:], inodeTable)
	binary.LittleEndian.PutUint64(sb[72:], dirTable)
	binary.LittleEndian.PutUint64(sb[80:], fragTable)
	binary.LittleEndian.PutUint64(sb[88:], invalid64) // export table

	if pad := w.opts.PadTo; pad > 0 {
		if rem := len(w.out) % pad; rem != 0 {
			if n := len(w.out) + pad - rem; n <= cap(w.out) {
				w.out = w.out[:n] // never written, so still zero
			} else {
				w.out = append(w.out, make([]byte, pad-rem)...)
			}
		}
	}
	return w.out, nil
}

func (w *writer) number(n *node) {
	for _, c := range n.children {
		if c.dir {
			w.number(c)
		}
	}
	for _, c := range n.children {
		if !c.dir {
			w.count++
			c.number = w.count
		}
	}
	w.count++
	n.number = w.count
}

// writeData writes every file's blocks, in tree order.
func (w *writer) writeData(n *node) error {
	for _, c := range n.children {
		if c.dir {
			if err := w.writeData(c); err != nil {
				return err
			}
			continue
		}
		if uint64(len(w.out))+uint64(len(c.data)) > 1<<32-1 {
			return fmt.Errorf("%w: %s: the image would pass 4 GiB", ErrBadEntry, c.name)
		}
		c.blocksStart = uint32(len(w.out))
		for off := 0; off < len(c.data); off += int(w.opts.BlockSize) {
			block := c.data[off:min(off+int(w.opts.BlockSize), len(c.data))]
			stored, compressed := w.maybeCompress(block)
			size := uint32(len(stored))
			if !compressed {
				size |= blockUncompressed
			}
			c.blockSizes = append(c.blockSizes, size)
			w.out = append(w.out, stored...)
		}
	}
	return nil
}

func (w *writer) maybeCompress(b []byte) ([]byte, bool) {
	if w.opts.Compression != Gzip {
		return b, false
	}
	if z := zlibCompress(b); len(z) < len(b) {
		return z, true
	}
	return b, false
}

// writeInodes writes, depth first, every inode and every directory listing:
// a directory's children before its listing, its listing before its own
// inode, which must point at the listing.
func (w *writer) writeInodes(n *node, parent uint32) error {
	for _, c := range n.children {
		if c.dir {
			if err := w.writeInodes(c, n.number); err != nil {
				return err
			}
		}
	}
	for _, c := range n.children {
		if !c.dir {
			w.writeFileInode(c)
		}
	}
	listBlock, listOff := w.dirs.position()
	size := w.writeListing(n)
	if size+3 > 0xFFFF {
		return fmt.Errorf("%w: directory %q has too many entries for a basic directory inode", ErrBadEntry, n.name)
	}
	n.inodeBlock, n.inodeOff = w.inodes.position()
	subdirs := uint32(0)
	for _, c := range n.children {
		if c.dir {
			subdirs++
		}
	}
	b := w.inodeHeader(typeDir, n)
	b = a32(b, listBlock)
	b = a32(b, 2+subdirs)      // hard link count
	b = a16(b, uint16(size+3)) // listing size, plus "." and ".."
	b = a16(b, listOff)        // offset in the listing's block
	b = a32(b, parent)         // parent inode number
	w.inodes.write(b)
	return nil
}

func (w *writer) writeFileInode(c *node) {
	c.inodeBlock, c.inodeOff = w.inodes.position()
	b := w.inodeHeader(typeFile, c)
	b = a32(b, c.blocksStart)
	b = a32(b, invalidFrag) // no fragment
	b = a32(b, 0)           // offset in fragment
	b = a32(b, uint32(len(c.data)))
	for _, s := range c.blockSizes {
		b = a32(b, s)
	}
	w.inodes.write(b)
}

func (w *writer) inodeHeader(typ uint16, n *node) []byte {
	b := w.scratch[:0]
	b = a16(b, typ)
	b = a16(b, n.mode)
	b = a16(b, 0) // uid index
	b = a16(b, 0) // gid index
	b = a32(b, w.opts.ModTime)
	b = a32(b, n.number)
	return b
}

// writeListing writes a directory's entries: runs of at most 256 entries
// under a header naming the inode metadata block they all live in and a
// base inode number they differ from by a 16-bit offset.
func (w *writer) writeListing(n *node) int {
	size := 0
	for i := 0; i < len(n.children); {
		first := n.children[i]
		j := i + 1
		for j < len(n.children) && j-i < maxDirHeader {
			c := n.children[j]
			delta := int64(c.number) - int64(first.number)
			if c.inodeBlock != first.inodeBlock || delta < -32768 || delta > 32767 {
				break
			}
			j++
		}
		h := w.scratch[:0]
		h = a32(h, uint32(j-i-1))
		h = a32(h, first.inodeBlock)
		h = a32(h, first.number)
		w.dirs.write(h)
		size += len(h)
		for _, c := range n.children[i:j] {
			typ := uint16(typeFile)
			if c.dir {
				typ = typeDir
			}
			e := w.scratch[:0]
			e = a16(e, c.inodeOff)
			e = a16(e, uint16(int16(int64(c.number)-int64(first.number))))
			e = a16(e, typ)
			e = a16(e, uint16(len(c.name)-1))
			e = append(e, c.name...)
			w.dirs.write(e)
			size += len(e)
		}
		i = j
	}
	return size
}

// metaWriter packs a table into metadata blocks: 8 KiB of data behind a
// 16-bit header (size on disk, bit 15 set when stored uncompressed).
type metaWriter struct {
	gzip bool
	out  []byte // finished blocks, as on disk
	cur  []byte // the block being filled, uncompressed
}

// position is where the next byte written will be: the start of its block
// relative to the table, and its offset within the uncompressed block.
func (m *metaWriter) position() (uint32, uint16) {
	return uint32(len(m.out)), uint16(len(m.cur))
}

func (m *metaWriter) write(p []byte) {
	for len(p) > 0 {
		n := min(metadataSize-len(m.cur), len(p))
		m.cur = append(m.cur, p[:n]...)
		p = p[n:]
		if len(m.cur) == metadataSize {
			m.flush()
		}
	}
}

func (m *metaWriter) flush() {
	if len(m.cur) == 0 {
		return
	}
	data, header := m.cur, uint16(len(m.cur))|metaUncompressed
	if m.gzip {
		if z := zlibCompress(m.cur); len(z) < len(m.cur) {
			data, header = z, uint16(len(z))
		}
	}
	m.out = a16(m.out, header)
	m.out = append(m.out, data...)
	m.cur = m.cur[:0]
}

func (m *metaWriter) finish() []byte {
	m.flush()
	return m.out
}

// zlibWriters keeps compressors: each holds ~1 MiB of state that takes
// longer to allocate than a small block takes to compress.
var zlibWriters = sync.Pool{New: func() any {
	zw, err := zlib.NewWriterLevel(nil, zlib.BestCompression)
	if err != nil {
		panic(err) // only for an invalid level
	}
	return zw
}}

func zlibCompress(b []byte) []byte {
	var buf bytes.Buffer
	zw := zlibWriters.Get().(*zlib.Writer) //nolint:errcheck // the pool holds only these
	zw.Reset(&buf)
	_, _ = zw.Write(b) // writes to a bytes.Buffer do not fail
	_ = zw.Close()
	zlibWriters.Put(zw)
	return buf.Bytes()
}

func a16(b []byte, v uint16) []byte { return binary.LittleEndian.AppendUint16(b, v) }
func a32(b []byte, v uint32) []byte { return binary.LittleEndian.AppendUint32(b, v) }
