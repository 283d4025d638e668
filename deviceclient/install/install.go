// Package install puts a signed bundle in place on the device, atomically:
// it verifies the bundle while writing it to a temporary file in the state
// directory (the statement and the signer's chain before a single image
// byte is kept), inspects the image, fsyncs, renames it into images/, moves
// the current pointer to it in one rename, raises the high-water mark and
// deletes all but the current and previous images. A crash at any point
// leaves either the old or the new image current, and Recover tidies up
// after it. The file kept is the bundle exactly as verified, so mount can
// verify the same bytes again and mount them in place.
package install

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/fleetprov/prov/core/contract/imagespec"
	"github.com/fleetprov/prov/deviceclient/state"
	"github.com/fleetprov/prov/internal/atomicfile"
	"github.com/fleetprov/prov/pki"
	"github.com/fleetprov/prov/pki/signedimage"
)

// MaxBundleSize caps a download: the largest image plus its statement.
const MaxBundleSize = imagespec.MaxImageSize + 12 + signedimage.MaxStatementSize

// ErrRefused wraps every reason a bundle is not installed (as opposed to an
// I/O failure of the device itself).
var ErrRefused = errors.New("bundle refused")

// ErrMarkedBad is a bundle of a generation that failed its health check
// on this device (state.Dir.MarkBad): it is not installed again; only a
// newer generation is.
var ErrMarkedBad = errors.New("generation failed its health check here")

// Options are what a bundle is checked against.
type Options struct {
	Roots  *pki.TrustBundle
	Serial string
	Rules  imagespec.Rules
	// Now is the clock (nil: time.Now). Floor is the earliest time the
	// device believes it is (state.Dir.ClockFloor with the binary's build
	// time; nil: the state directory's own, without one). The high-water
	// mark's issue time is a floor either way, and every accepted bundle
	// raises it.
	Now   func() time.Time
	Floor *pki.Floor
	// Failpoint, if set, is called after each step by name (a test seam:
	// "written", "synced", "renamed", "previous", "current", "highwater",
	// "pruned").
	Failpoint func(step string)
}

func (o Options) now() time.Time {
	if o.Now != nil {
		return o.Now()
	}
	return time.Now()
}

// floor is the floor to verify at: o.Floor, or the state directory's.
func (o Options) floor(st *state.Dir) *pki.Floor {
	if o.Floor != nil {
		return o.Floor
	}
	return st.ClockFloor(time.Time{}, nil)
}

func (o Options) step(s string) {
	if o.Failpoint != nil {
		o.Failpoint(s)
	}
}

// Result is what Install did.
type Result struct {
	signedimage.Verified
	Name    string // file name in images/
	Changed bool   // false: the bundle was the current one already
}

// Install reads a bundle from r (at most MaxBundleSize bytes are read) and
// makes it current. A refused bundle changes nothing.
func Install(st *state.Dir, r io.Reader, o Options) (*Result, error) {
	unlock, err := st.Lock()
	if err != nil {
		return nil, err
	}
	defer unlock()
	hw, err := st.HighWater()
	if err != nil {
		return nil, err
	}
	images := st.File(state.ImagesDir)
	tmp, err := os.CreateTemp(images, ".incoming-*.tmp")
	if err != nil {
		return nil, fmt.Errorf("install: %w", err)
	}
	tmpName := tmp.Name()
	defer func() {
		_ = tmp.Close()
		_ = os.Remove(tmpName) // a no-op once renamed
	}()

	floor := o.floor(st)
	_ = floor.Raise(hw.IssuedAt) // a failed write is the floor's owner's to report

	var img bytes.Buffer
	v, err := signedimage.Verify(io.TeeReader(io.LimitReader(r, MaxBundleSize+1), tmp), &img, signedimage.VerifyOptions{
		Roots: o.Roots, Serial: o.Serial, MinGeneration: hw.Generation, Now: o.now(),
		Floor: floor, MaxImageSize: imagespec.MaxImageSize,
	})
	if errors.Is(err, signedimage.ErrRollback) {
		// Said with the word an operator searches the journal and the
		// status for, and the mark the bundle fell below.
		return nil, fmt.Errorf("%w: rollback (this device has accepted generation %d and never goes back): %w", ErrRefused, hw.Generation, err)
	}
	if err != nil {
		return nil, refused(err)
	}
	if _, err := Check(v, img.Bytes(), o.Rules); err != nil {
		return nil, refused(err)
	}
	if st.IsBad(v.Generation) {
		return nil, fmt.Errorf("generation %d: %w", v.Generation, ErrMarkedBad)
	}
	o.step("written")
	name := state.ImageName(v.Generation, v.SHA256)
	res := &Result{Verified: *v, Name: name}
	cur, hasCur, err := st.Pointer(state.Current)
	if err != nil {
		return nil, err
	}
	if hasCur && cur.Name == name {
		_ = floor.Raise(v.IssuedAt)
		return res, st.RaiseHighWater(state.HighWater{Generation: v.Generation, IssuedAt: v.IssuedAt})
	}
	if err := tmp.Sync(); err != nil {
		return nil, fmt.Errorf("install: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return nil, fmt.Errorf("install: %w", err)
	}
	o.step("synced")
	if err := os.Rename(tmpName, filepath.Join(images, name)); err != nil {
		return nil, fmt.Errorf("install: %w", err)
	}
	if err := atomicfile.SyncDir(images); err != nil {
		return nil, fmt.Errorf("install: %w", err)
	}
	o.step("renamed")
	if hasCur {
		if err := st.SetPointer(state.Previous, cur.Name); err != nil {
			return nil, fmt.Errorf("install: %w", err)
		}
	}
	o.step("previous")
	if err := st.SetPointer(state.Current, name); err != nil {
		return nil, fmt.Errorf("install: %w", err)
	}
	o.step("current")
	if err := st.SetInstalled(state.Installed{Image: name, Generation: v.Generation}); err != nil {
		return nil, fmt.Errorf("install: %w", err)
	}
	if err := st.RaiseHighWater(state.HighWater{Generation: v.Generation, IssuedAt: v.IssuedAt}); err != nil {
		return nil, fmt.Errorf("install: %w", err)
	}
	_ = floor.Raise(v.IssuedAt)
	o.step("highwater")
	res.Changed = true
	if err := prune(st); err != nil {
		return res, fmt.Errorf("install: the new image is current; removing old ones: %w", err)
	}
	o.step("pruned")
	return res, nil
}

func refused(err error) error { return fmt.Errorf("%w: %w", ErrRefused, err) }

// prune deletes every image but the current and previous ones, and any
// temporary file left by a crash.
func prune(st *state.Dir) error {
	keep := map[string]bool{}
	for _, p := range []string{state.Current, state.Previous} {
		img, ok, err := st.Pointer(p)
		if err != nil {
			return err
		}
		if ok {
			keep[img.Name] = true
		}
	}
	entries, err := os.ReadDir(st.File(state.ImagesDir))
	if err != nil {
		return err
	}
	for _, e := range entries {
		if keep[e.Name()] {
			continue
		}
		if err := os.Remove(filepath.Join(st.File(state.ImagesDir), e.Name())); err != nil {
			return err
		}
	}
	return atomicfile.SyncDir(st.File(state.ImagesDir))
}

// Installed is a verified installed bundle and where its image starts.
type Installed struct {
	signedimage.Verified
	state.Image
	// Offset is where the image starts in the bundle file; the image is
	// the file's last Length bytes.
	Offset int64
}

// Verify verifies an installed bundle file again, as at install but
// without the high-water mark (the previous image is below it by design)
// and with the signer's chain checked at the statement's issue time: the
// bundle was accepted when its signer was valid, and a signer certificate
// that expired since (a device offline for months, a rotated signer) must
// not cost the device its data at the next boot. The signature and every
// byte are still checked.
func Verify(img state.Image, o Options) (*Installed, error) {
	f, err := os.Open(img.Path)
	if err != nil {
		return nil, err
	}
	defer func() { _ = f.Close() }()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	v, err := signedimage.Verify(io.LimitReader(f, MaxBundleSize+1), &buf, signedimage.VerifyOptions{
		Roots: o.Roots, Serial: o.Serial, AtIssue: true, MaxImageSize: imagespec.MaxImageSize,
	})
	if err != nil {
		return nil, fmt.Errorf("%s: %w", img.Path, refused(err))
	}
	if _, err := Check(v, buf.Bytes(), o.Rules); err != nil {
		return nil, fmt.Errorf("%s: %w", img.Path, refused(err))
	}
	return &Installed{Verified: *v, Image: img, Offset: fi.Size() - v.Length}, nil
}

// Fallback says that the image that was current no longer verifies (a
// changed file on the card, say) and the previous one, which does, was made
// current instead. The high-water mark is not lowered: the device fetches
// the current generation again.
type Fallback struct {
	Refused  string // the bundle file that was current
	Reason   error  // why it was refused
	Restored *Installed
}

func (f *Fallback) String() string {
	return fmt.Sprintf("the current image %s does not verify (%v); the previous one, generation %d, is current instead",
		f.Refused, f.Reason, f.Restored.Generation)
}

// Recover tidies a state directory after a crash: it deletes temporary
// files, checks the current image and raises the high-water mark to its
// generation (a crash can come between the pointer and the mark). If the
// current image no longer verifies, it makes the previous one current if
// that one does, and says so in the Fallback. It returns the current image,
// or nil if there is none.
func Recover(st *state.Dir, o Options) (*Installed, *Fallback, error) {
	unlock, err := st.Lock()
	if err != nil {
		return nil, nil, err
	}
	defer unlock()
	for _, dir := range []string{st.Path, st.File(state.ImagesDir)} {
		entries, err := os.ReadDir(dir)
		if err != nil {
			return nil, nil, err
		}
		for _, e := range entries {
			if strings.HasPrefix(e.Name(), ".") && strings.HasSuffix(e.Name(), ".tmp") {
				_ = os.Remove(filepath.Join(dir, e.Name()))
			}
		}
	}
	cur, ok, err := st.Pointer(state.Current)
	if err != nil || !ok {
		return nil, nil, err
	}
	in, err := Verify(cur, o)
	if err != nil {
		prev, okPrev, perr := st.Pointer(state.Previous)
		if perr != nil || !okPrev || prev.Name == cur.Name {
			return nil, nil, fmt.Errorf("the current image %s does not verify and there is no previous one: %w", cur.Name, err)
		}
		pin, perr := Verify(prev, o)
		if perr != nil {
			return nil, nil, fmt.Errorf("the current image %s does not verify (%w), and neither does the previous one (%w)", cur.Name, err, perr)
		}
		if err := st.SetPointer(state.Current, prev.Name); err != nil {
			return nil, nil, err
		}
		if err := st.SetInstalled(state.Installed{Image: prev.Name, Generation: pin.Generation}); err != nil {
			return nil, nil, err
		}
		return pin, &Fallback{Refused: cur.Name, Reason: err, Restored: pin}, nil
	}
	if err := st.RaiseHighWater(state.HighWater{Generation: in.Generation, IssuedAt: in.IssuedAt}); err != nil {
		return nil, nil, err
	}
	// A crash between the pointer and the record, or a state directory
	// from before the record, leaves it behind the current image.
	if err := st.SetInstalled(state.Installed{Image: cur.Name, Generation: in.Generation}); err != nil {
		return nil, nil, err
	}
	_ = o.floor(st).Raise(in.IssuedAt)
	return in, nil, nil
}
