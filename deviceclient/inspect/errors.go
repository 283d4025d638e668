package inspect

import "errors"

// Classes of refusal: every refusal wraps one, so a caller can tell a
// malformed image from one that is well formed but holds what it must not.
var (
	ErrMalformed       = errors.New("malformed image")
	ErrUnexpectedEntry = errors.New("entry not allowed in a provisioning image")
	ErrNotRegular      = errors.New("entry is neither a directory nor a regular file")
	ErrBadMode         = errors.New("entry has a mode other than 0755 (directories) or 0644 (files)")
	ErrBadOwner        = errors.New("entry is not owned by root")
	ErrTooLarge        = errors.New("image over the limits")
	ErrMissing         = errors.New("required file missing")
	ErrMismatch        = errors.New("image contents disagree with the signed statement")
)

// Check is one check of the inspection and the sentinel error of its
// refusal: errors.Is(err, inspect.ErrFileSize). Its Name is the stable name
// docs/image-format.md ("Pre-mount inspection") and the conformance suite
// use; it wraps its class, so errors.Is(err, inspect.ErrMalformed) holds too.
type Check struct {
	name, rule string
	class      error
}

// Name is the check's stable name, such as "file-size".
func (c *Check) Name() string { return c.name }

// Rule says what the check requires, in a few words.
func (c *Check) Rule() string { return c.rule }

func (c *Check) Error() string { return c.class.Error() + ": " + c.name }

// Unwrap returns the check's class.
func (c *Check) Unwrap() error { return c.class }

// checks holds every check in the order Inspect runs them.
var checks []*Check

func check(class error, name, rule string) *Check {
	c := &Check{name: name, rule: rule, class: class}
	checks = append(checks, c)
	return c
}

// Checks returns every check in the order Inspect runs them; a refusal is
// always the first that fails.
func Checks() []*Check { return append([]*Check(nil), checks...) }

// The checks, in the order Inspect runs them. The superblock must be the one
// core's writer (core/imagebuild/squashfs) makes; the tables must be what
// it writes and what the kernel's squashfs reads without an error; then the
// tree must be what the imagespec contract allows and the statement names.
var (
	ErrImageSize = check(ErrTooLarge, "image-size", "at most 2 MiB (imagespec.MaxImageSize)")

	ErrSuperblockMissing = check(ErrMalformed, "superblock-missing", "at least the 96 bytes of a superblock")
	ErrMagic             = check(ErrMalformed, "superblock-magic", `magic "hsqs" (0x73717368)`)
	ErrVersion           = check(ErrMalformed, "superblock-version", "squashfs version 4.0")
	ErrCompression       = check(ErrMalformed, "superblock-compression", "compression id 1 (zlib)")
	ErrBlockSize         = check(ErrMalformed, "superblock-block-size", "block size 131072 bytes, block_log 17")
	ErrFlags             = check(ErrMalformed, "superblock-flags", "flags 0x0a1b (uncompressed) or 0x0210 (zlib)")
	ErrMkfsTime          = check(ErrMalformed, "superblock-time", "modification time 0")
	ErrFragmentCount     = check(ErrMalformed, "superblock-fragments", "no fragments")
	ErrIDCount           = check(ErrBadOwner, "superblock-ids", "exactly one owner id")
	ErrInodeCount        = check(ErrTooLarge, "superblock-inodes", "1 to 1024 inodes")
	ErrTables            = check(ErrMalformed, "superblock-tables", "no xattr or export table; inode, directory, fragment (= id block) and id tables in that order, the id index last")
	ErrImageLength       = check(ErrMalformed, "image-length", "bytes_used rounded up to 4096 is the image length, the padding zeros")

	ErrIDTable   = check(ErrMalformed, "id-table", "one id in one metadata block, right after the directory table")
	ErrIDNotRoot = check(ErrBadOwner, "id-root", "the one id is 0 (root)")

	ErrMetadataBlock = check(ErrMalformed, "metadata-block", "inode and directory tables of metadata blocks: 8 KiB each but the last, compressed only in a zlib image")
	ErrTableSize     = check(ErrTooLarge, "table-size", "inode and directory tables at most 1 MiB each, uncompressed")

	ErrInodeType     = check(ErrNotRegular, "inode-type", "basic directory (1) or basic regular file (2)")
	ErrInodeMode     = check(ErrBadMode, "inode-mode", "directories 0755, files 0644")
	ErrInodeOwner    = check(ErrBadOwner, "inode-owner", "uid and gid index 0")
	ErrInodeTime     = check(ErrMalformed, "inode-time", "modification time 0")
	ErrInodeNumber   = check(ErrMalformed, "inode-number", "numbers 1 to the inode count, each once")
	ErrDirInode      = check(ErrMalformed, "directory-inode", "a listing of at most 65532 bytes in the directory table, link count at least 2")
	ErrFileFragment  = check(ErrMalformed, "file-fragment", "no fragment, fragment offset 0")
	ErrFileTooLarge  = check(ErrTooLarge, "file-too-large", "a file at most 64 KiB (imagespec.MaxFileSize)")
	ErrFileBlocks    = check(ErrMalformed, "file-blocks", "one size word per block, 1 to 131072 bytes, uncompressed in an uncompressed image, inside the data area")
	ErrContentSize   = check(ErrTooLarge, "content-size", "all files together at most 1 MiB of data plus 64 KiB per fixed file")
	ErrFileSize      = check(ErrMalformed, "file-size", "every block holds exactly the file's bytes of that block: its size is its data's")
	ErrInodeTableEnd = check(ErrMalformed, "inode-table-end", "the inode count's inodes fill the inode table")
	ErrDataLayout    = check(ErrMalformed, "data-layout", "the files' data fill the data area, from byte 96 to the inode table, without gap or overlap")

	ErrRootInode        = check(ErrMalformed, "root-inode", "the root is a directory, the last inode, its parent number the inode count plus one")
	ErrListing          = check(ErrMalformed, "directory-listing", "a listing is headers of 1 to 256 entries each, exactly its size")
	ErrDirentInode      = check(ErrMalformed, "dirent-inode", "an entry names the start of an inode and that inode's number")
	ErrDirentType       = check(ErrMalformed, "dirent-type", "an entry's type is its inode's type")
	ErrDirentName       = check(ErrMalformed, "dirent-name", "names 1 to 255 bytes, no / or NUL, not . or .., strictly increasing bytewise")
	ErrLink             = check(ErrMalformed, "link", "every inode in one directory only, no hard links, no loops")
	ErrParent           = check(ErrMalformed, "parent", "a directory's parent number is the directory that lists it")
	ErrLinkCount        = check(ErrMalformed, "link-count", "a directory's link count is 2 plus its subdirectories")
	ErrUnreachable      = check(ErrMalformed, "unreachable", "every inode is reached from the root")
	ErrDirTableLayout   = check(ErrMalformed, "directory-table-layout", "the listings fill the directory table without gap or overlap")
	ErrSecondReader     = check(ErrMalformed, "second-reader", "github.com/CalebQ42/squashfs reads the tree the checks above passed")
	ErrEntryPath        = check(ErrUnexpectedEntry, "entry-path", "every path one the imagespec rules allow")
	ErrDataLimits       = check(ErrTooLarge, "data-limits", "at most 256 data files, 1 MiB in all")
	ErrFixedFiles       = check(ErrMissing, "fixed-files", "every fixed file present (/etc/machine-id may be absent)")
	ErrSerialNumber     = check(ErrMismatch, "serial-number", "/etc/serial-number holds the statement's serial and a newline")
	ErrMetadata         = check(ErrMismatch, "metadata", "/etc/prov/image.json in the builder's spelling, naming the statement's serial and generation")
	ErrExtensionRelease = check(ErrMismatch, "extension-release", "the confext marker holds exactly its fixed content")
	ErrFixedValues      = check(ErrMismatch, "fixed-file-values", "hostname, machine-id and the MQTT ids each one value by its imagespec rule and a newline")
)
