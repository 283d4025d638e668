// Package inspecttest makes images that one check of the device's pre-mount
// inspection (deviceclient/inspect) refuses: the cases of
// core/imagebuild/squashfs/tamper (shared with the conformance suite, which
// prov-core generates and so cannot link this package), each tied to the
// *inspect.Check its name spells.
package inspecttest

import (
	"fmt"

	"github.com/fleetprov/prov/core/imagebuild/squashfs/tamper"
	"github.com/fleetprov/prov/deviceclient/inspect"
)

// ErrNotBuilderImage is returned for an input that is not an uncompressed
// image as core's builder writes it.
var ErrNotBuilderImage = tamper.ErrNotBuilderImage

// Case is one image the inspection refuses.
type Case struct {
	// Name is a stable, file-name-safe name of the case
	// ("superblock-block-size-64k").
	Name string
	// Check is the check that refuses it: errors.Is(err, Check) holds for
	// the error Inspect returns.
	Check *inspect.Check
	// Make returns the changed copy of good, which must be an image core
	// built (imagebuild.Build) of a small record, /etc/hostname and
	// /etc/mqtt-client-id in one inode block; good is not modified.
	Make func(good []byte) ([]byte, error)
}

// Cases returns every case of tamper.Cases, in the order of inspect.Checks.
// It panics if a case names no check: the two packages disagree, which
// every test of inspect would report anyway.
func Cases() []Case {
	byName := map[string]*inspect.Check{}
	for _, c := range inspect.Checks() {
		byName[c.Name()] = c
	}
	var out []Case
	for _, c := range tamper.Cases() {
		check, ok := byName[c.Check]
		if !ok {
			panic(fmt.Sprintf("inspecttest: case %s names no check %q", c.Name, c.Check))
		}
		out = append(out, Case{Name: c.Name, Check: check, Make: c.Make})
	}
	return out
}

// The four findings of issue 14, for inspect's tests that name them.
var (
	// BlockSize64K: 64 KiB blocks, as mksquashfs -b 65536 writes.
	BlockSize64K = tamper.BlockSize64K
	// FlagDuplicates: the superblock flag DUPLICATES.
	FlagDuplicates = tamper.FlagDuplicates
	// FileSizeLarger: /etc/hostname's size one byte more than its data.
	FileSizeLarger = tamper.FileSizeLarger
	// DirentType: /etc's entry for hostname says directory.
	DirentType = tamper.DirentType
)
