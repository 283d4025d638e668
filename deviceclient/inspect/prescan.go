package inspect

import (
	"bytes"
	"cmp"
	"compress/zlib"
	"encoding/binary"
	"fmt"
	"io"
	"slices"

	"github.com/fleetprov/prov/core/contract/imagespec"
)

// On-disk constants of SquashFS 4.0 (fs/squashfs/squashfs_fs.h).
const (
	sbSize            = 96
	sbMagic           = 0x73717368
	metaSize          = 8192
	metaPlain         = 0x8000 // in a metadata block's 16-bit header
	blockUncompressed = 1 << 24
	compZlib          = 1
	invalidTable      = ^uint64(0)
	invalidFrag       = ^uint32(0)
	typeBasicDir      = 1
	typeBasicFile     = 2
	maxDirCount       = 256 // entries under one directory header
	maxName           = 255 // NAME_MAX; the writer's limit (squashfs allows 256)
)

// What core's writer (core/imagebuild/squashfs) makes, and nothing else.
// The device cannot link the writer (it is core's), so these are written
// out here; the tests build images with the writer and inspect them, so a
// change there that these do not follow fails them.
const (
	builderBlockSize = 128 << 10
	builderBlockLog  = 17
	builderPadding   = 4096
	dataStart        = sbSize // the first file's data follows the superblock
	// flagsUncompressed: uncompressed inodes, data, fragments and ids, no
	// fragments, no xattrs (Compression None, what core builds).
	flagsUncompressed = 0x0001 | 0x0002 | 0x0008 | 0x0010 | 0x0200 | 0x0800
	// flagsZlib: no fragments, no xattrs; a block is zlib-compressed where
	// that is smaller (Compression Gzip).
	flagsZlib = 0x0010 | 0x0200
)

// Bounds of the inspection's own work.
const (
	// maxInodes bounds an image's inodes: the fixed files and data files of
	// imagespec plus their directories, with room.
	maxInodes = 1024
	// maxTable bounds the inode and the directory table, each, uncompressed.
	// 1024 inodes need at most 36 KiB of inodes and 270 KiB of listings.
	maxTable = 1 << 20
	// maxContent bounds all files' sizes together, so that inflating the
	// data of a zlib image is bounded as well as reading it: the data files'
	// limit plus one file's limit per fixed file.
	maxContent = imagespec.MaxTotalSize + 7*imagespec.MaxFileSize
)

type superblock struct {
	inodes, mkfsTime, blockSize, fragments uint32
	compression, blockLog, flags, ids      uint16
	major, minor                           uint16
	rootRef, bytesUsed, idTable, xattr     uint64
	inodeTable, dirTable, fragTable, expo  uint64
}

// table is a metadata table, decoded: its bytes, and where each block
// starts on disk relative to the table. Every block but the last holds
// metaSize bytes, so block i's bytes start at data[i*metaSize].
type table struct {
	data   []byte
	starts []uint64
	end    uint64 // the table's length on disk
}

// pos resolves a reference (a block's start relative to the table and an
// offset in its decoded bytes) to a position in data. atEnd admits the
// position just past the last byte, which an empty listing may name.
func (t *table) pos(block uint64, off uint16, atEnd bool) (int, bool) {
	i, found := slices.BinarySearch(t.starts, block)
	p := i*metaSize + int(off)
	switch {
	case found && int(off) < min(metaSize, len(t.data)-i*metaSize):
		return p, true
	case atEnd && p == len(t.data) && (found || block == t.end):
		return p, true
	}
	return 0, false
}

// inodeInfo is what the walk needs of one inode.
type inodeInfo struct {
	typ     uint16
	number  uint32
	listing int // directories: position of the listing in the directory table
	listLen int // directories: its length (file_size - 3)
	nlink   uint32
	parent  uint32
	reached bool
}

type extent struct{ start, end uint64 }

// image is the state of one prescan.
type image struct {
	r          io.ReaderAt
	size       int64
	sb         superblock
	zlib       bool          // the flags admit zlib-compressed blocks
	zr         io.ReadCloser // the one decompressor, made on first use
	maxFile    uint32
	inodeTable table
	dirTable   table
	byPos      map[int]*inodeInfo // by position in the inode table
	data       []extent           // non-empty files' data
	listings   []extent           // non-empty directories' listings
	reached    uint32
}

// prescan checks, with its own bounded parser and before any general
// reader sees the image, that the image is one core's writer makes and one
// the kernel reads without an error: the superblock field by field, the id
// table, every inode (type, mode, owner, time, number, a file's size against
// its stored data), the data area, and the directory tree from the root
// (each entry names an inode of its type, names valid and sorted, link
// counts, parents, every inode reached once). The checks and their order are
// the list in errors.go and docs/image-format.md.
//
// Bounds: it reads at most the image (size <= imagespec.MaxImageSize) once,
// decodes at most maxTable bytes per metadata table and inflates at most
// maxContent bytes of file data; its memory is those tables and a map of at
// most maxInodes inodes. Time and memory are linear in the image's size.
func prescan(r io.ReaderAt, size int64, maxFile uint32) error {
	im := &image{r: r, size: size, maxFile: maxFile}
	if err := im.superblock(); err != nil {
		return err
	}
	if err := im.idTable(); err != nil {
		return err
	}
	var err error
	if im.inodeTable, err = im.readTable("inode table", im.sb.inodeTable, im.sb.dirTable, ErrMetadataBlock, maxTable, ErrTableSize); err != nil {
		return err
	}
	if im.dirTable, err = im.readTable("directory table", im.sb.dirTable, im.sb.fragTable, ErrMetadataBlock, maxTable, ErrTableSize); err != nil {
		return err
	}
	if err := im.inodes(); err != nil {
		return err
	}
	if err := fills(im.data, dataStart, im.sb.inodeTable); err != nil {
		return fmt.Errorf("%w: %w", ErrDataLayout, err)
	}
	return im.tree()
}

func (im *image) superblock() error {
	if im.size > imagespec.MaxImageSize {
		// Inspect refuses this first; the bound holds here too.
		return fmt.Errorf("%w: %d bytes, at most %d", ErrImageSize, im.size, imagespec.MaxImageSize)
	}
	if im.size < sbSize {
		return fmt.Errorf("%w: %d bytes, a superblock is %d", ErrSuperblockMissing, im.size, sbSize)
	}
	var raw [sbSize]byte
	if _, err := im.r.ReadAt(raw[:], 0); err != nil {
		return fmt.Errorf("%w: %w", ErrSuperblockMissing, err)
	}
	le := binary.LittleEndian
	if le.Uint32(raw[0:]) != sbMagic {
		return fmt.Errorf("%w: %#08x, want 0x73717368 (hsqs): not a squashfs image", ErrMagic, le.Uint32(raw[0:]))
	}
	sb := superblock{
		inodes: le.Uint32(raw[4:]), mkfsTime: le.Uint32(raw[8:]), blockSize: le.Uint32(raw[12:]), fragments: le.Uint32(raw[16:]),
		compression: le.Uint16(raw[20:]), blockLog: le.Uint16(raw[22:]), flags: le.Uint16(raw[24:]), ids: le.Uint16(raw[26:]),
		major: le.Uint16(raw[28:]), minor: le.Uint16(raw[30:]),
		rootRef: le.Uint64(raw[32:]), bytesUsed: le.Uint64(raw[40:]), idTable: le.Uint64(raw[48:]), xattr: le.Uint64(raw[56:]),
		inodeTable: le.Uint64(raw[64:]), dirTable: le.Uint64(raw[72:]), fragTable: le.Uint64(raw[80:]), expo: le.Uint64(raw[88:]),
	}
	im.sb = sb
	im.zlib = sb.flags == flagsZlib
	switch {
	case sb.major != 4 || sb.minor != 0:
		return fmt.Errorf("%w: version %d.%d, want 4.0", ErrVersion, sb.major, sb.minor)
	case sb.compression != compZlib:
		return fmt.Errorf("%w: compression id %d, want 1 (zlib)", ErrCompression, sb.compression)
	case sb.blockSize != builderBlockSize || sb.blockLog != builderBlockLog:
		return fmt.Errorf("%w: block size %d, block_log %d; want %d, %d", ErrBlockSize, sb.blockSize, sb.blockLog, builderBlockSize, builderBlockLog)
	case sb.flags != flagsUncompressed && sb.flags != flagsZlib:
		return fmt.Errorf("%w: flags %#04x; want %#04x (uncompressed) or %#04x (zlib)", ErrFlags, sb.flags, flagsUncompressed, flagsZlib)
	case sb.mkfsTime != 0:
		return fmt.Errorf("%w: %d, want 0", ErrMkfsTime, sb.mkfsTime)
	case sb.fragments != 0:
		return fmt.Errorf("%w: %d fragments, want 0", ErrFragmentCount, sb.fragments)
	case sb.ids != 1:
		return fmt.Errorf("%w: %d ids, want 1", ErrIDCount, sb.ids)
	case sb.inodes == 0 || sb.inodes > maxInodes:
		return fmt.Errorf("%w: %d inodes, want 1 to %d", ErrInodeCount, sb.inodes, maxInodes)
	case sb.xattr != invalidTable || sb.expo != invalidTable:
		return fmt.Errorf("%w: xattr table %#x, export table %#x; want both absent (0xffffffffffffffff)", ErrTables, sb.xattr, sb.expo)
	case sb.inodeTable < dataStart || sb.dirTable <= sb.inodeTable || sb.fragTable < sb.dirTable ||
		sb.idTable <= sb.fragTable || sb.bytesUsed > uint64(im.size) || sb.idTable+8 != sb.bytesUsed:
		return fmt.Errorf("%w: inode table %d, directory table %d, fragment table %d, id table %d, bytes used %d, image %d bytes",
			ErrTables, sb.inodeTable, sb.dirTable, sb.fragTable, sb.idTable, sb.bytesUsed, im.size)
	}
	// The writer pads with zeros to a multiple of 4 KiB, and so the image
	// ends where its padding does: nothing may hide after bytes_used.
	if want := (sb.bytesUsed + builderPadding - 1) / builderPadding * builderPadding; uint64(im.size) != want {
		return fmt.Errorf("%w: %d bytes, %d used: want %d", ErrImageLength, im.size, sb.bytesUsed, want)
	}
	pad := make([]byte, uint64(im.size)-sb.bytesUsed)
	if _, err := im.r.ReadAt(pad, int64(sb.bytesUsed)); err != nil { //nolint:gosec // bytesUsed <= size
		return fmt.Errorf("%w: %w", ErrImageLength, err)
	}
	for i, c := range pad {
		if c != 0 {
			return fmt.Errorf("%w: a byte other than zero in the padding, at %d", ErrImageLength, sb.bytesUsed+uint64(i)) //nolint:gosec // i >= 0
		}
	}
	return nil
}

// idTable checks the id table: its index (8 bytes, the last of the image)
// names one metadata block, the one between the directory table and the
// index, where the fragment table start points, holding one id: 0.
func (im *image) idTable() error {
	var ptr [8]byte
	if _, err := im.r.ReadAt(ptr[:], int64(im.sb.idTable)); err != nil { //nolint:gosec // < bytesUsed <= size
		return fmt.Errorf("%w: %w", ErrIDTable, err)
	}
	if block := binary.LittleEndian.Uint64(ptr[:]); block != im.sb.fragTable {
		return fmt.Errorf("%w: the index names %d, the block is at %d", ErrIDTable, block, im.sb.fragTable)
	}
	ids, err := im.readTable("id table", im.sb.fragTable, im.sb.idTable, ErrIDTable, metaSize, ErrIDTable)
	if err != nil {
		return err
	}
	if len(ids.starts) != 1 || len(ids.data) != 4 {
		return fmt.Errorf("%w: %d blocks of %d bytes in all", ErrIDTable, len(ids.starts), len(ids.data))
	}
	if id := binary.LittleEndian.Uint32(ids.data); id != 0 {
		return fmt.Errorf("%w: id %d, want 0", ErrIDNotRoot, id)
	}
	return nil
}

// readTable decodes the metadata blocks in [start, end): each a 16-bit
// header and 1 to 8 KiB of data, zlib-compressed unless bit 15 is set (and
// only in a zlib image), every block but the last holding 8 KiB decoded.
// A block that breaks these rules is refused as c; more than limit bytes
// decoded as over.
func (im *image) readTable(name string, start, end uint64, c *Check, limit int, over *Check) (table, error) {
	t := table{end: end - start}
	for pos := start; pos < end; {
		if len(t.starts) > 0 && len(t.data)%metaSize != 0 {
			return table{}, fmt.Errorf("%w: %s: the block before %d holds %d bytes, not 8 KiB", c, name, pos, len(t.data)%metaSize)
		}
		var h [2]byte
		if _, err := im.r.ReadAt(h[:], int64(pos)); err != nil { //nolint:gosec // pos < end <= bytesUsed <= size
			return table{}, fmt.Errorf("%w: %s: header at %d: %w", c, name, pos, err)
		}
		header := binary.LittleEndian.Uint16(h[:])
		n := uint64(header &^ metaPlain)
		if n == 0 || n > metaSize || pos+2+n > end {
			return table{}, fmt.Errorf("%w: %s: block at %d of %d bytes", c, name, pos, n)
		}
		if header&metaPlain == 0 && !im.zlib {
			return table{}, fmt.Errorf("%w: %s: compressed block at %d in an uncompressed image", c, name, pos)
		}
		if len(t.data)+metaSize > limit {
			return table{}, fmt.Errorf("%w: %s: more than %d bytes", over, name, limit)
		}
		t.starts = append(t.starts, pos-start)
		raw := make([]byte, n)
		if _, err := im.r.ReadAt(raw, int64(pos+2)); err != nil { //nolint:gosec // bounded above
			return table{}, fmt.Errorf("%w: %s: block at %d: %w", c, name, pos, err)
		}
		if header&metaPlain != 0 {
			t.data = append(t.data, raw...)
		} else {
			var out bytes.Buffer
			out.Write(t.data)
			if _, err := im.inflate(&out, raw, metaSize); err != nil {
				return table{}, fmt.Errorf("%w: %s: block at %d: %w", c, name, pos, err)
			}
			t.data = out.Bytes()
		}
		pos += 2 + n
	}
	return t, nil
}

// inflate writes to dst the zlib stream src, which must decode to at most
// limit bytes and end exactly where src does (the kernel refuses trailing
// bytes too), and returns how many bytes it wrote. A bomb stops at limit+1
// bytes. One decompressor (~40 KiB of state) serves the whole prescan.
func (im *image) inflate(dst io.Writer, src []byte, limit int) (int64, error) {
	br := bytes.NewReader(src)
	if im.zr == nil {
		zr, err := zlib.NewReader(br)
		if err != nil {
			return 0, err
		}
		im.zr = zr
	} else if err := im.zr.(zlib.Resetter).Reset(br, nil); err != nil { //nolint:errcheck,forcetypeassert // zlib's readers are Resetters
		return 0, err
	}
	n, err := io.Copy(dst, io.LimitReader(im.zr, int64(limit)+1))
	switch {
	case err != nil:
		return 0, err
	case n > int64(limit):
		return 0, fmt.Errorf("inflates to more than %d bytes", limit)
	case br.Len() != 0:
		return 0, fmt.Errorf("%d bytes after the zlib stream", br.Len())
	}
	return n, nil
}

// inodes walks the inode table inode by inode; it must hold exactly
// sb.inodes inodes and nothing after them.
func (im *image) inodes() error {
	t, le := im.inodeTable.data, binary.LittleEndian
	im.byPos = make(map[int]*inodeInfo, im.sb.inodes)
	numbers := make([]bool, im.sb.inodes+1)
	var content uint64
	off := 0
	for i := uint32(1); i <= im.sb.inodes; i++ {
		if off+32 > len(t) {
			return fmt.Errorf("%w: the table ends inside inode %d of %d", ErrInodeTableEnd, i, im.sb.inodes)
		}
		typ, perm := le.Uint16(t[off:]), le.Uint16(t[off+2:])
		uid, gid, mtime, num := le.Uint16(t[off+4:]), le.Uint16(t[off+6:]), le.Uint32(t[off+8:]), le.Uint32(t[off+12:])
		switch {
		case typ != typeBasicDir && typ != typeBasicFile:
			return fmt.Errorf("%w: inode %d has type %d (symlink, device, fifo, socket or extended), want 1 or 2", ErrInodeType, num, typ)
		case typ == typeBasicDir && perm != imagespec.DirMode, typ == typeBasicFile && perm != imagespec.FileMode:
			return fmt.Errorf("%w: inode %d of type %d has mode %04o", ErrInodeMode, num, typ, perm)
		case uid != 0 || gid != 0:
			return fmt.Errorf("%w: inode %d has owner index %d:%d", ErrInodeOwner, num, uid, gid)
		case mtime != 0:
			return fmt.Errorf("%w: inode %d has time %d, want 0", ErrInodeTime, num, mtime)
		case num == 0 || num > im.sb.inodes || numbers[num]:
			return fmt.Errorf("%w: inode number %d (of %d inodes) is 0, over the count or twice", ErrInodeNumber, num, im.sb.inodes)
		}
		numbers[num] = true
		in := &inodeInfo{typ: typ, number: num}
		im.byPos[off] = in
		b := t[off+16 : off+32]
		off += 32
		if typ == typeBasicDir {
			if err := im.dirInode(in, b); err != nil {
				return err
			}
			continue
		}
		n, err := im.fileInode(in, b, t[off:], &content)
		if err != nil {
			return err
		}
		off += n
	}
	if off != len(t) {
		return fmt.Errorf("%w: %d bytes after the last inode", ErrInodeTableEnd, len(t)-off)
	}
	return nil
}

// dirInode checks a basic directory inode's fields after its header.
func (im *image) dirInode(in *inodeInfo, b []byte) error {
	le := binary.LittleEndian
	start, nlink, fsize, offset, parent := le.Uint32(b), le.Uint32(b[4:]), le.Uint16(b[8:]), le.Uint16(b[10:]), le.Uint32(b[12:])
	if fsize < 3 || nlink < 2 {
		return fmt.Errorf("%w: directory inode %d has listing size %d, link count %d", ErrDirInode, in.number, fsize, nlink)
	}
	p, ok := im.dirTable.pos(uint64(start), offset, fsize == 3)
	if !ok || p+int(fsize)-3 > len(im.dirTable.data) {
		return fmt.Errorf("%w: directory inode %d's listing (block %d, offset %d, %d bytes) is outside the directory table",
			ErrDirInode, in.number, start, offset, fsize-3)
	}
	in.listing, in.listLen, in.nlink, in.parent = p, int(fsize)-3, nlink, parent
	if in.listLen > 0 {
		im.listings = append(im.listings, extent{uint64(p), uint64(p + in.listLen)}) //nolint:gosec // p >= 0
	}
	return nil
}

// fileInode checks a basic file inode's fields after its header, rest
// being what follows them in the table (its block list first), and the
// file's stored data against its size. It returns the block list's length.
func (im *image) fileInode(in *inodeInfo, b, rest []byte, content *uint64) (int, error) {
	le := binary.LittleEndian
	start, frag, fragOff, fsize := le.Uint32(b), le.Uint32(b[4:]), le.Uint32(b[8:]), le.Uint32(b[12:])
	if frag != invalidFrag || fragOff != 0 {
		return 0, fmt.Errorf("%w: file inode %d has fragment %d offset %d", ErrFileFragment, in.number, frag, fragOff)
	}
	if fsize > im.maxFile {
		return 0, fmt.Errorf("%w: file inode %d holds %d bytes, at most %d", ErrFileTooLarge, in.number, fsize, im.maxFile)
	}
	blocks := int((fsize + builderBlockSize - 1) / builderBlockSize) // fsize <= maxFile: no overflow
	if 4*blocks > len(rest) {
		return 0, fmt.Errorf("%w: the table ends inside the block list of inode %d", ErrInodeTableEnd, in.number)
	}
	words := make([]uint32, blocks)
	end := uint64(start)
	for i := range words {
		w := le.Uint32(rest[4*i:])
		n := uint64(w &^ blockUncompressed)
		if n == 0 || n > builderBlockSize || w>>25 != 0 || (!im.zlib && w&blockUncompressed == 0) {
			return 0, fmt.Errorf("%w: file inode %d block %d has size word %#x", ErrFileBlocks, in.number, i, w)
		}
		words[i] = w
		end += n
	}
	if uint64(start) < dataStart || end > im.sb.inodeTable {
		return 0, fmt.Errorf("%w: file inode %d has data at [%d, %d), outside the data area [%d, %d)",
			ErrFileBlocks, in.number, start, end, dataStart, im.sb.inodeTable)
	}
	if *content += uint64(fsize); *content > maxContent {
		return 0, fmt.Errorf("%w: the files hold more than %d bytes together", ErrContentSize, maxContent)
	}
	// The kernel reads block i expecting exactly this many bytes, and fails
	// the read (EIO) on any other number, after the image was mounted.
	pos := uint64(start)
	for i, w := range words {
		want := builderBlockSize
		if i == len(words)-1 {
			want = int(fsize) - i*builderBlockSize
		}
		n := uint64(w &^ blockUncompressed)
		got := int(n) //nolint:gosec // n <= builderBlockSize
		if w&blockUncompressed == 0 {
			raw := make([]byte, n)
			if _, err := im.r.ReadAt(raw, int64(pos)); err != nil { //nolint:gosec // inside the data area
				return 0, fmt.Errorf("%w: file inode %d block %d: %w", ErrFileSize, in.number, i, err)
			}
			n, err := im.inflate(io.Discard, raw, builderBlockSize)
			if err != nil {
				return 0, fmt.Errorf("%w: file inode %d block %d: %w", ErrFileSize, in.number, i, err)
			}
			got = int(n)
		}
		if got != want {
			return 0, fmt.Errorf("%w: file inode %d has size %d: block %d holds %d bytes, not %d", ErrFileSize, in.number, fsize, i, got, want)
		}
		pos += n
	}
	if end > uint64(start) {
		im.data = append(im.data, extent{uint64(start), end})
	}
	return 4 * blocks, nil
}

// fills says whether the extents cover [from, to) exactly, without gap or
// overlap.
func fills(es []extent, from, to uint64) error {
	slices.SortFunc(es, func(a, b extent) int { return cmp.Compare(a.start, b.start) })
	at := from
	for _, e := range es {
		if e.start != at {
			return fmt.Errorf("[%d, %d) where the one before ends at %d (a gap or an overlap)", e.start, e.end, at)
		}
		at = e.end
	}
	if at != to {
		return fmt.Errorf("the last ends at %d, the area at %d", at, to)
	}
	return nil
}

// tree walks the directories from the root: every entry names the start of
// an inode, of the entry's type and number, once; names are valid and
// sorted; link counts and parents agree; every inode is reached; the
// listings fill the directory table.
func (im *image) tree() error {
	ref := im.sb.rootRef
	p, ok := im.inodeTable.pos(ref>>16, uint16(ref&0xffff), false) //nolint:gosec // masked
	root := im.byPos[p]
	switch {
	case !ok || ref>>48 != 0 || root == nil:
		return fmt.Errorf("%w: reference %#x names no inode", ErrRootInode, ref)
	case root.typ != typeBasicDir || root.number != im.sb.inodes || root.parent != im.sb.inodes+1:
		return fmt.Errorf("%w: inode %d of type %d, parent %d", ErrRootInode, root.number, root.typ, root.parent)
	}
	root.reached = true
	im.reached = 1
	if err := im.walk(root); err != nil {
		return err
	}
	if im.reached != im.sb.inodes {
		return fmt.Errorf("%w: %d of %d inodes", ErrUnreachable, im.reached, im.sb.inodes)
	}
	if err := fills(im.listings, 0, uint64(len(im.dirTable.data))); err != nil {
		return fmt.Errorf("%w: %w", ErrDirTableLayout, err)
	}
	return nil
}

// walk checks one directory's listing and, depth first, its
// subdirectories'. The depth is bounded: each directory is entered once.
func (im *image) walk(d *inodeInfo) error {
	le := binary.LittleEndian
	l := im.dirTable.data[d.listing : d.listing+d.listLen]
	prev, subdirs := "", uint32(0)
	for off := 0; off < len(l); {
		if off+12 > len(l) {
			return fmt.Errorf("%w: directory %d: a header at %d of %d bytes", ErrListing, d.number, off, len(l))
		}
		count, block, base := le.Uint32(l[off:])+1, le.Uint32(l[off+4:]), le.Uint32(l[off+8:])
		if count > maxDirCount {
			return fmt.Errorf("%w: directory %d: a header of %d entries, at most 256", ErrListing, d.number, count)
		}
		off += 12
		for range count {
			if off+8 > len(l) || off+8+int(le.Uint16(l[off+6:]))+1 > len(l) {
				return fmt.Errorf("%w: directory %d: an entry at %d of %d bytes", ErrListing, d.number, off, len(l))
			}
			ioff, delta, typ := le.Uint16(l[off:]), int16(le.Uint16(l[off+2:])), le.Uint16(l[off+4:]) //nolint:gosec // a signed delta
			name := string(l[off+8 : off+8+int(le.Uint16(l[off+6:]))+1])
			off += 8 + len(name)
			p, ok := im.inodeTable.pos(uint64(block), ioff, false)
			in := im.byPos[p]
			num := int64(base) + int64(delta)
			switch {
			case !ok || in == nil:
				return fmt.Errorf("%w: directory %d: %q names no inode (block %d, offset %d)", ErrDirentInode, d.number, name, block, ioff)
			case num != int64(in.number):
				return fmt.Errorf("%w: directory %d: %q names inode number %d, the inode has %d", ErrDirentInode, d.number, name, num, in.number)
			case typ != in.typ:
				return fmt.Errorf("%w: directory %d: %q has type %d, its inode %d type %d", ErrDirentType, d.number, name, typ, in.number, in.typ)
			case len(name) > maxName || name == "." || name == ".." || bytes.ContainsAny([]byte(name), "/\x00"):
				return fmt.Errorf("%w: directory %d holds %q", ErrDirentName, d.number, name)
			case prev != "" && name <= prev:
				return fmt.Errorf("%w: directory %d lists %q after %q", ErrDirentName, d.number, name, prev)
			case in.reached:
				return fmt.Errorf("%w: inode %d (%q in directory %d) is reached twice", ErrLink, in.number, name, d.number)
			}
			prev = name
			in.reached = true
			im.reached++
			if in.typ != typeBasicDir {
				continue
			}
			subdirs++
			if in.parent != d.number {
				return fmt.Errorf("%w: directory %d (%q) names parent %d, it is in %d", ErrParent, in.number, name, in.parent, d.number)
			}
			if err := im.walk(in); err != nil {
				return err
			}
		}
	}
	if d.nlink != 2+subdirs {
		return fmt.Errorf("%w: directory %d has link count %d and %d subdirectories", ErrLinkCount, d.number, d.nlink, subdirs)
	}
	return nil
}
