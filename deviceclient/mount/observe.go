package mount

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Observed is what the kernel has mounted on the target, read from
// /proc/self/mountinfo and the loop device's sysfs, not from our record.
type Observed struct {
	// Overlay: our overlay is the top mount on the target.
	Overlay bool `json:"overlay"`
	// Other is the type and source of another mount on top of the target,
	// if one covers it.
	Other string `json:"other,omitempty"`
	// LoopDevice holds the image; BackingFile, Offset and Size say which
	// bytes of which file it maps.
	LoopDevice  string `json:"loopDevice,omitempty"`
	BackingFile string `json:"backingFile,omitempty"`
	Offset      int64  `json:"offset,omitempty"`
	Size        int64  `json:"size,omitempty"`
	// Deleted: the backing file was removed while mounted.
	Deleted bool `json:"deleted,omitempty"`
	// Lower is the bundle file the overlay's lower directory is named
	// after (images/<name>/etc). Unlike the loop device, it can be read
	// from another mount namespace, where the run directory's own mounts
	// do not propagate (it is private).
	Lower string `json:"lower,omitempty"`
}

// Image is the name of the bundle file the mounted image comes from.
func (o *Observed) Image() string {
	if o == nil || o.BackingFile == "" {
		return ""
	}
	return filepath.Base(o.BackingFile)
}

// Observe reads what is mounted on the target; nil when nothing is.
func Observe(l Layout) (*Observed, error) {
	top, err := topMount(l.Target)
	if err != nil || top == nil {
		return nil, err
	}
	if top.source != source || top.fstype != "overlay" {
		return &Observed{Other: top.fstype + " " + top.source}, nil
	}
	o := &Observed{Overlay: true}
	// lowerdir=<run>/images/<name>/etc:<run>/base
	lower := ""
	for _, opt := range strings.Split(top.superOpts, ",") {
		if v, ok := strings.CutPrefix(opt, "lowerdir="); ok {
			lower, _, _ = strings.Cut(v, ":")
		}
	}
	if lower == "" {
		return o, nil
	}
	if filepath.Base(lower) == "etc" {
		o.Lower = filepath.Base(filepath.Dir(lower)) + ".bundle"
	}
	img, err := topMount(filepath.Dir(lower))
	if err != nil || img == nil || img.fstype != "squashfs" {
		return o, err
	}
	o.LoopDevice = img.source
	sys := filepath.Join("/sys/block", filepath.Base(img.source), "loop")
	backing, err := os.ReadFile(filepath.Join(sys, "backing_file"))
	if err != nil {
		return o, fmt.Errorf("loop device %s: %w", img.source, err)
	}
	o.BackingFile = strings.TrimSuffix(strings.TrimSpace(string(backing)), " (deleted)")
	o.Deleted = strings.HasSuffix(strings.TrimSpace(string(backing)), "(deleted)")
	for _, f := range []struct {
		name string
		v    *int64
	}{{"offset", &o.Offset}, {"sizelimit", &o.Size}} {
		b, err := os.ReadFile(filepath.Join(sys, f.name))
		if err != nil {
			return o, fmt.Errorf("loop device %s: %w", img.source, err)
		}
		if *f.v, err = strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64); err != nil {
			return o, fmt.Errorf("loop device %s %s: %w", img.source, f.name, err)
		}
	}
	return o, nil
}
