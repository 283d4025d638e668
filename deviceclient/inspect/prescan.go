package inspect

import (
	"bytes"
	"compress/zlib"
	"encoding/binary"
	"fmt"
	"io"
)

// On-disk constants of SquashFS 4.0 (fs/squashfs/squashfs_fs.h).
const (
	sbSize        = 96
	sbMagic       = 0x73717368
	metaSize      = 8192
	metaPlain     = 0x8000
	compZlib      = 1
	invalidTable  = ^uint64(0)
	invalidFrag   = ^uint32(0)
	flagCompOpts  = 0x0400
	typeBasicDir  = 1
	typeBasicFile = 2
	specialBits   = 0o7000
	// maxInodes bounds an image's inodes: the fixed files and data files of
	// imagespec plus their directories, with room.
	maxInodes = 1024
	// maxInodeTable bounds the inode table, uncompressed.
	maxInodeTable = 1 << 20
)

type superblock struct {
	inodes, blockSize, fragments          uint32
	compression, blockLog, flags, ids     uint16
	major, minor                          uint16
	bytesUsed, idTable, xattrTable        uint64
	inodeTable, dirTable, fragTable, expo uint64
}

// prescan checks, with its own bounded parser and before any general
// reader sees the image, what keeps that reader's memory and time bounded
// and rules out whole classes of entries: SquashFS 4.0 with zlib and no
// fragments, xattrs or export table; every inode a basic directory or a
// basic regular file of at most maxFile bytes, without setuid, setgid or
// sticky bits, owned by id 0; the id table holding only root.
func prescan(r io.ReaderAt, size int64, maxFile uint32) error {
	if size < sbSize {
		return fmt.Errorf("%w: %d bytes is smaller than a superblock", ErrMalformed, size)
	}
	var raw [sbSize]byte
	if _, err := r.ReadAt(raw[:], 0); err != nil {
		return fmt.Errorf("%w: superblock: %w", ErrMalformed, err)
	}
	le := binary.LittleEndian
	if le.Uint32(raw[0:]) != sbMagic {
		return fmt.Errorf("%w: not a squashfs image", ErrMalformed)
	}
	sb := superblock{
		inodes: le.Uint32(raw[4:]), blockSize: le.Uint32(raw[12:]), fragments: le.Uint32(raw[16:]),
		compression: le.Uint16(raw[20:]), blockLog: le.Uint16(raw[22:]), flags: le.Uint16(raw[24:]), ids: le.Uint16(raw[26:]),
		major: le.Uint16(raw[28:]), minor: le.Uint16(raw[30:]),
		bytesUsed: le.Uint64(raw[40:]), idTable: le.Uint64(raw[48:]), xattrTable: le.Uint64(raw[56:]),
		inodeTable: le.Uint64(raw[64:]), dirTable: le.Uint64(raw[72:]), fragTable: le.Uint64(raw[80:]), expo: le.Uint64(raw[88:]),
	}
	switch {
	case sb.major != 4 || sb.minor != 0:
		return fmt.Errorf("%w: squashfs version %d.%d, want 4.0", ErrMalformed, sb.major, sb.minor)
	case sb.compression != compZlib || sb.flags&flagCompOpts != 0:
		return fmt.Errorf("%w: compression %d (with options: %v), want zlib", ErrMalformed, sb.compression, sb.flags&flagCompOpts != 0)
	case sb.blockLog < 12 || sb.blockLog > 20 || sb.blockSize != 1<<sb.blockLog:
		return fmt.Errorf("%w: block size %d, log %d", ErrMalformed, sb.blockSize, sb.blockLog)
	case sb.fragments != 0:
		return fmt.Errorf("%w: %d fragments; provisioning images have none", ErrMalformed, sb.fragments)
	case sb.xattrTable != invalidTable:
		return fmt.Errorf("%w: has extended attributes", ErrMalformed)
	case sb.expo != invalidTable:
		return fmt.Errorf("%w: has an export table", ErrMalformed)
	case sb.ids != 1:
		return fmt.Errorf("%w: %d owner ids, want only root", ErrBadOwner, sb.ids)
	case sb.inodes == 0 || sb.inodes > maxInodes:
		return fmt.Errorf("%w: %d inodes, at most %d", ErrTooLarge, sb.inodes, maxInodes)
	case sb.bytesUsed > uint64(size) || sb.bytesUsed < sbSize:
		return fmt.Errorf("%w: %d bytes used in an image of %d", ErrMalformed, sb.bytesUsed, size)
	case sb.inodeTable < sbSize || sb.dirTable <= sb.inodeTable || sb.idTable < sb.dirTable || sb.idTable > sb.bytesUsed-8:
		return fmt.Errorf("%w: tables out of order or outside the image", ErrMalformed)
	}
	if err := checkIDTable(r, sb); err != nil {
		return err
	}
	table, err := readMetadata(r, sb.inodeTable, sb.dirTable, maxInodeTable)
	if err != nil {
		return fmt.Errorf("inode table: %w", err)
	}
	return checkInodes(table, sb, maxFile)
}

// checkIDTable checks that the one id is 0 (root).
func checkIDTable(r io.ReaderAt, sb superblock) error {
	var ptr [8]byte
	if _, err := r.ReadAt(ptr[:], int64(sb.idTable)); err != nil { //nolint:gosec // bounded by bytesUsed above
		return fmt.Errorf("%w: id table: %w", ErrMalformed, err)
	}
	block := binary.LittleEndian.Uint64(ptr[:])
	if block < sb.dirTable || block >= sb.idTable {
		return fmt.Errorf("%w: id block outside its table", ErrMalformed)
	}
	ids, err := readMetadata(r, block, sb.idTable, metaSize)
	if err != nil {
		return fmt.Errorf("id table: %w", err)
	}
	if len(ids) < 4 || binary.LittleEndian.Uint32(ids) != 0 {
		return fmt.Errorf("%w: the owner id is not root", ErrBadOwner)
	}
	return nil
}

// readMetadata decodes the metadata blocks in [start, end): each a 16-bit
// header and at most 8 KiB of data, zlib-compressed unless bit 15 is set.
// It returns at most limit bytes.
func readMetadata(r io.ReaderAt, start, end uint64, limit int) ([]byte, error) {
	var out []byte
	for pos := start; pos < end; {
		var h [2]byte
		if _, err := r.ReadAt(h[:], int64(pos)); err != nil { //nolint:gosec // pos < end <= bytesUsed <= size
			return nil, fmt.Errorf("%w: metadata header at %d: %w", ErrMalformed, pos, err)
		}
		header := binary.LittleEndian.Uint16(h[:])
		n := uint64(header &^ metaPlain)
		if n == 0 || n > metaSize || pos+2+n > end {
			return nil, fmt.Errorf("%w: metadata block at %d of %d bytes", ErrMalformed, pos, n)
		}
		data := make([]byte, n)
		if _, err := r.ReadAt(data, int64(pos+2)); err != nil { //nolint:gosec // bounded above
			return nil, fmt.Errorf("%w: metadata block at %d: %w", ErrMalformed, pos, err)
		}
		if header&metaPlain == 0 {
			zr, err := zlib.NewReader(bytes.NewReader(data))
			if err != nil {
				return nil, fmt.Errorf("%w: metadata block at %d: %w", ErrMalformed, pos, err)
			}
			// Never inflate past one block: a bomb stops here.
			data, err = io.ReadAll(io.LimitReader(zr, metaSize+1))
			if err != nil || len(data) > metaSize {
				return nil, fmt.Errorf("%w: metadata block at %d does not inflate to at most 8 KiB", ErrMalformed, pos)
			}
		}
		out = append(out, data...)
		if len(out) > limit {
			return nil, fmt.Errorf("%w: metadata over %d bytes", ErrTooLarge, limit)
		}
		pos += 2 + n
	}
	return out, nil
}

// checkInodes walks the inode table inode by inode; it must hold exactly
// sb.inodes inodes and nothing after them.
func checkInodes(t []byte, sb superblock, maxFile uint32) error {
	le := binary.LittleEndian
	seen := make(map[uint32]bool, sb.inodes)
	off := 0
	for i := uint32(0); i < sb.inodes; i++ {
		if off+16 > len(t) {
			return fmt.Errorf("%w: inode table ends inside inode %d", ErrMalformed, i+1)
		}
		typ, perm := le.Uint16(t[off:]), le.Uint16(t[off+2:])
		uid, gid, num := le.Uint16(t[off+4:]), le.Uint16(t[off+6:]), le.Uint32(t[off+12:])
		switch {
		case perm&specialBits != 0:
			return fmt.Errorf("%w: inode %d has mode %04o (setuid, setgid or sticky)", ErrBadMode, num, perm)
		case uid != 0 || gid != 0:
			return fmt.Errorf("%w: inode %d has owner index %d:%d", ErrBadOwner, num, uid, gid)
		case num == 0 || num > sb.inodes || seen[num]:
			return fmt.Errorf("%w: inode number %d", ErrMalformed, num)
		}
		seen[num] = true
		off += 16
		switch typ {
		case typeBasicDir:
			if off+16 > len(t) {
				return fmt.Errorf("%w: inode table ends inside directory inode %d", ErrMalformed, num)
			}
			if le.Uint16(t[off+8:]) < 3 {
				return fmt.Errorf("%w: directory inode %d has a listing size below 3", ErrMalformed, num)
			}
			off += 16
		case typeBasicFile:
			if off+16 > len(t) {
				return fmt.Errorf("%w: inode table ends inside file inode %d", ErrMalformed, num)
			}
			start, frag, fsize := le.Uint32(t[off:]), le.Uint32(t[off+4:]), le.Uint32(t[off+12:])
			if frag != invalidFrag {
				return fmt.Errorf("%w: file inode %d uses a fragment", ErrMalformed, num)
			}
			if fsize > maxFile {
				return fmt.Errorf("%w: file inode %d holds %d bytes, at most %d", ErrTooLarge, num, fsize, maxFile)
			}
			off += 16
			blocks := int((fsize + sb.blockSize - 1) / sb.blockSize) // fsize <= maxFile: no overflow
			if off+4*blocks > len(t) {
				return fmt.Errorf("%w: inode table ends inside the block list of inode %d", ErrMalformed, num)
			}
			end := uint64(start)
			for b := range blocks {
				bs := le.Uint32(t[off+4*b:])
				n := uint64(bs &^ (1 << 24))
				if n == 0 || n > uint64(sb.blockSize) || bs>>25 != 0 {
					return fmt.Errorf("%w: file inode %d block %d has size word %#x", ErrMalformed, num, b, bs)
				}
				end += n
			}
			if end > sb.inodeTable {
				return fmt.Errorf("%w: file inode %d has data outside the data area", ErrMalformed, num)
			}
			off += 4 * blocks
		default:
			return fmt.Errorf("%w: inode %d has type %d (symlink, device, fifo, socket or extended)", ErrNotRegular, num, typ)
		}
	}
	if off != len(t) {
		return fmt.Errorf("%w: %d bytes after the last inode", ErrMalformed, len(t)-off)
	}
	return nil
}
