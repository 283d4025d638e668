// Package imagespec is the contract of a provisioning image's contents:
// which paths it holds, with which modes, sizes and formats. Core's builder
// writes images by it and the device's pre-mount inspection checks them by
// it, so both sides read the rules from here. Standard library only (and internal/untrusted, which is too).
//
// The image root holds etc/ and nothing else; the device overlays the
// image's etc/ over /etc, so the paths below are where files appear on the
// device. The image is also a valid systemd-confext image named "prov".
//
// Contract: linked by prov-core, prov-proxy and prov-device. A change here
// reaches boards in the field: a board refuses an image its own copy of
// these rules does not accept, so loosen on the device first, tighten on
// core first.
package imagespec

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/fleetprov/prov/internal/untrusted"
)

// FormatVersion is the version of the image contents (paths, metadata).
// Changing what a given record builds into is a new version.
const FormatVersion = 1

// The fixed files of every image: the seed's table, the metadata and the
// confext marker. All are immutable for a device except Metadata, which
// changes with each generation.
const (
	Hostname         = "/etc/hostname"
	MachineID        = "/etc/machine-id" // optional, by core's configuration
	SerialNumber     = "/etc/serial-number"
	MQTTClientID     = "/etc/mqtt-client-id"
	MQTTGroupID      = "/etc/mqtt-group-id"
	Metadata         = "/etc/prov/image.json"
	ExtensionName    = "prov"
	ExtensionRelease = "/etc/extension-release.d/extension-release." + ExtensionName
	// DataDir is where mutable data files go by default.
	DataDir = "/etc/prov/data/"
)

// FixedFiles lists the fixed files, sorted.
var FixedFiles = []string{ExtensionRelease, Hostname, MachineID, MQTTClientID, MQTTGroupID, Metadata, SerialNumber}

// Modes of everything in an image.
const (
	FileMode = 0o644
	DirMode  = 0o755
)

// Limits. An image within them is at most about 1.1 MiB; MaxImageSize is
// the cap a device puts on a download.
const (
	MaxDataFiles   = 256
	MaxFileSize    = 64 << 10
	MaxTotalSize   = 1 << 20 // of all data file contents
	MaxPathLen     = 255
	MaxPathDepth   = 8 // components below /
	MaxNameLen     = 64
	MaxMQTTIDLen   = 128
	MaxImageSize   = 2 << 20
	MaxHostnameLen = 63
)

// Errors.
var (
	ErrBadPath   = errors.New("path not allowed in a provisioning image")
	ErrBadValue  = errors.New("bad value")
	ErrTooLarge  = errors.New("over the image limits")
	ErrBadPolicy = errors.New("bad image rules")
)

// Rules say where mutable data may go. Core and devices must agree; the
// default is DataDir only.
type Rules struct {
	// AllowedPrefixes are directories (absolute, under /etc/, ending in
	// "/") under which data files may be.
	AllowedPrefixes []string
}

// DefaultRules allow data files under DataDir only.
func DefaultRules() Rules { return Rules{AllowedPrefixes: []string{DataDir}} }

// Validate checks the rules themselves.
func (r Rules) Validate() error {
	if len(r.AllowedPrefixes) == 0 {
		return fmt.Errorf("%w: no allowed prefixes", ErrBadPolicy)
	}
	for _, p := range r.AllowedPrefixes {
		if !strings.HasPrefix(p, "/etc/") || !strings.HasSuffix(p, "/") || p == "/etc/" {
			return fmt.Errorf("%w: allowed prefix %q must be a directory below /etc/, ending in /", ErrBadPolicy, p)
		}
		if err := checkComponents(strings.TrimSuffix(p, "/")); err != nil {
			return fmt.Errorf("%w: allowed prefix %q: %w", ErrBadPolicy, p, err)
		}
		if p == "/etc/extension-release.d/" {
			return fmt.Errorf("%w: %q is reserved", ErrBadPolicy, p)
		}
	}
	return nil
}

// CheckDataPath checks the path of a mutable data file.
func (r Rules) CheckDataPath(p string) error {
	if err := checkComponents(p); err != nil {
		return fmt.Errorf("%w: %s: %w", ErrBadPath, untrusted.Quote(p), err)
	}
	if IsFixed(p) {
		return fmt.Errorf("%w: %q is a fixed file of the image, not data", ErrBadPath, p)
	}
	if !r.under(p) {
		return fmt.Errorf("%w: %q is not below an allowed prefix %v", ErrBadPath, p, r.AllowedPrefixes)
	}
	return nil
}

// CheckDir reports whether a directory may exist in an image: a parent of
// a fixed file, an allowed prefix or a parent of one, or a directory below
// an allowed prefix.
func (r Rules) CheckDir(p string) error {
	if err := checkComponents(p); err != nil && p != "/" {
		return fmt.Errorf("%w: %s: %w", ErrBadPath, untrusted.Quote(p), err)
	}
	d := strings.TrimSuffix(p, "/") + "/"
	if r.under(d) {
		return nil
	}
	for _, f := range FixedFiles {
		if strings.HasPrefix(f, d) {
			return nil
		}
	}
	for _, a := range r.AllowedPrefixes {
		if strings.HasPrefix(a, d) {
			return nil
		}
	}
	return fmt.Errorf("%w: directory %q", ErrBadPath, p)
}

func (r Rules) under(p string) bool {
	for _, a := range r.AllowedPrefixes {
		if strings.HasPrefix(p, a) && len(p) > len(a) {
			return true
		}
	}
	return false
}

// IsFixed reports whether p is one of the fixed files.
func IsFixed(p string) bool {
	for _, f := range FixedFiles {
		if f == p {
			return true
		}
	}
	return false
}

// checkComponents accepts an absolute, clean path of at most MaxPathDepth
// components, each 1 to MaxNameLen of [A-Za-z0-9._-] and not starting with
// '.': no "..", no hidden files, nothing a shell or a look-alike could
// play tricks with.
func checkComponents(p string) error {
	if len(p) > MaxPathLen {
		return fmt.Errorf("longer than %d bytes", MaxPathLen)
	}
	if !strings.HasPrefix(p, "/") {
		return errors.New("not absolute")
	}
	parts := strings.Split(p[1:], "/")
	if len(parts) > MaxPathDepth {
		return fmt.Errorf("deeper than %d components", MaxPathDepth)
	}
	for _, name := range parts {
		if name == "" {
			return errors.New("empty component")
		}
		if len(name) > MaxNameLen {
			return fmt.Errorf("a component longer than %d bytes", MaxNameLen)
		}
		if name[0] == '.' {
			return fmt.Errorf("component %q starts with '.'", name)
		}
		for i := 0; i < len(name); i++ {
			c := name[i]
			if (c < 'a' || c > 'z') && (c < 'A' || c > 'Z') && (c < '0' || c > '9') && c != '.' && c != '_' && c != '-' {
				return fmt.Errorf("component %s has a character outside [A-Za-z0-9._-]", untrusted.Quote(name))
			}
		}
	}
	return nil
}

// CheckHostname accepts a lower-case host name label of 1 to 63
// characters. Lengths are counted in characters (runes), the unit the
// message states; only ASCII is accepted, so an accepted name has as many
// bytes.
func CheckHostname(s string) error {
	const want = "a-z, 0-9 and '-', not starting or ending with '-'"
	if n := utf8.RuneCountInString(s); n == 0 || n > MaxHostnameLen {
		return fmt.Errorf("%w: hostname %s: %d characters, want 1 to %d of %s", ErrBadValue, untrusted.Quote(s), n, MaxHostnameLen, want)
	}
	if s[0] == '-' || s[len(s)-1] == '-' {
		return fmt.Errorf("%w: hostname %s: want %s", ErrBadValue, untrusted.Quote(s), want)
	}
	if i := untrusted.BadChar(s, func(c rune) bool { return c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' }); i > 0 {
		return fmt.Errorf("%w: hostname %s: character %d is not one of %s", ErrBadValue, untrusted.Quote(s), i, want)
	}
	return nil
}

// CheckMachineID accepts what machine-id(5) specifies: 32 lower-case hex
// digits, not all zero.
func CheckMachineID(s string) error {
	if len(s) != 32 || strings.Trim(s, "0") == "" {
		return fmt.Errorf("%w: machine-id: want 32 lower-case hex digits, not all zero", ErrBadValue)
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return fmt.Errorf("%w: machine-id: want 32 lower-case hex digits", ErrBadValue)
		}
	}
	return nil
}

// CheckMQTTID accepts an MQTT client or group ID: 1 to 128 characters of
// [A-Za-z0-9._:-] (safe in a topic, a file and a log line). Its length is
// counted in characters, as the message says (only ASCII is accepted).
func CheckMQTTID(what, s string) error {
	const want = "A-Z, a-z, 0-9 and . _ : -"
	if n := utf8.RuneCountInString(s); n == 0 || n > MaxMQTTIDLen {
		return fmt.Errorf("%w: %s %s: %d characters, want 1 to %d of %s", ErrBadValue, what, untrusted.Quote(s), n, MaxMQTTIDLen, want)
	}
	if i := untrusted.BadChar(s, func(c rune) bool {
		return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.ContainsRune("._:-", c)
	}); i > 0 {
		return fmt.Errorf("%w: %s %s: character %d is not one of %s", ErrBadValue, what, untrusted.Quote(s), i, want)
	}
	return nil
}

// ImageMetadata is the content of Metadata: what a device, or anyone
// reading a mounted image, needs to know which image it is.
type ImageMetadata struct {
	Format     int       `json:"format"`
	Serial     string    `json:"serial"`
	Generation uint64    `json:"generation"`
	IssuedAt   time.Time `json:"issuedAt"`
}

// MarshalMetadata encodes metadata deterministically, with a final newline.
func MarshalMetadata(m ImageMetadata) ([]byte, error) {
	b, err := json.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("image metadata: %w", err)
	}
	return append(b, '\n'), nil
}

// ParseMetadata decodes Metadata strictly.
func ParseMetadata(b []byte) (ImageMetadata, error) {
	var m ImageMetadata
	dec := json.NewDecoder(strings.NewReader(string(b)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&m); err != nil {
		return m, fmt.Errorf("%w: image metadata: %w", ErrBadValue, err)
	}
	if dec.More() {
		return m, fmt.Errorf("%w: image metadata: data after the object", ErrBadValue)
	}
	if m.Format != FormatVersion {
		return m, fmt.Errorf("%w: image metadata format %d, want %d", ErrBadValue, m.Format, FormatVersion)
	}
	return m, nil
}

// ExtensionReleaseContent is the confext marker: any OS may merge it, as
// configuration for the whole system.
const ExtensionReleaseContent = "ID=_any\nCONFEXT_SCOPE=system\n"
