// Package imagebuild turns a device record into its provisioning image: the
// files of the imagespec contract, packed by the deterministic squashfs
// writer, and signed into a bundle (pki/signedimage). The same record gives
// the same bytes on every core instance, at any time.
package imagebuild

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/fleetprov/prov/core/contract/imagespec"
	"github.com/fleetprov/prov/core/imagebuild/squashfs"
	"github.com/fleetprov/prov/pki"
	"github.com/fleetprov/prov/pki/signedimage"
)

// Record is what an image is built from: a device's immutable data, its
// mutable data files and the generation they belong to.
type Record struct {
	Serial     string `json:"serial"`
	Generation uint64 `json:"generation"`
	// IssuedAt is when this generation was made. It is part of the record,
	// not the clock at build time, so rebuilding gives the same bytes.
	IssuedAt     time.Time `json:"issuedAt"`
	Hostname     string    `json:"hostname"`
	MachineID    string    `json:"machineId,omitempty"` // empty: no /etc/machine-id in the image
	MQTTClientID string    `json:"mqttClientId"`
	MQTTGroupID  string    `json:"mqttGroupId"`
	// Data maps absolute paths (below an allowed prefix) to file contents.
	Data map[string]string `json:"data,omitempty"`
}

// ErrBadRecord wraps every validation failure of a record.
var ErrBadRecord = errors.New("bad device record")

// Validate checks a record against the rules; the error names the field or
// the data path that is wrong.
func (r *Record) Validate(rules imagespec.Rules) error {
	if err := rules.Validate(); err != nil {
		return err
	}
	if err := pki.ValidateSerial(r.Serial); err != nil {
		return fmt.Errorf("%w: serial: %w", ErrBadRecord, err)
	}
	if r.Generation == 0 {
		return fmt.Errorf("%w: generation: must be 1 or more", ErrBadRecord)
	}
	if r.IssuedAt.IsZero() {
		return fmt.Errorf("%w: issuedAt: missing", ErrBadRecord)
	}
	if err := imagespec.CheckHostname(r.Hostname); err != nil {
		return fmt.Errorf("%w: hostname: %w", ErrBadRecord, err)
	}
	if r.MachineID != "" {
		if err := imagespec.CheckMachineID(r.MachineID); err != nil {
			return fmt.Errorf("%w: machineId: %w", ErrBadRecord, err)
		}
	}
	if err := imagespec.CheckMQTTID("mqttClientId", r.MQTTClientID); err != nil {
		return fmt.Errorf("%w: %w", ErrBadRecord, err)
	}
	if err := imagespec.CheckMQTTID("mqttGroupId", r.MQTTGroupID); err != nil {
		return fmt.Errorf("%w: %w", ErrBadRecord, err)
	}
	if len(r.Data) > imagespec.MaxDataFiles {
		return fmt.Errorf("%w: data: %d files, at most %d", imagespec.ErrTooLarge, len(r.Data), imagespec.MaxDataFiles)
	}
	paths := r.dataPaths()
	total := 0
	for i, p := range paths {
		if err := rules.CheckDataPath(p); err != nil {
			return fmt.Errorf("%w: data: %w", ErrBadRecord, err)
		}
		n := len(r.Data[p])
		if n > imagespec.MaxFileSize {
			return fmt.Errorf("%w: data %s: %d bytes, at most %d", imagespec.ErrTooLarge, p, n, imagespec.MaxFileSize)
		}
		total += n
		// A data file must not be where another needs a directory; sorted,
		// such a pair is adjacent.
		if i > 0 && strings.HasPrefix(p, paths[i-1]+"/") {
			return fmt.Errorf("%w: data: %s is a file and the directory of %s", ErrBadRecord, paths[i-1], p)
		}
	}
	if total > imagespec.MaxTotalSize {
		return fmt.Errorf("%w: data: %d bytes in all, at most %d", imagespec.ErrTooLarge, total, imagespec.MaxTotalSize)
	}
	return nil
}

func (r *Record) dataPaths() []string {
	paths := make([]string, 0, len(r.Data))
	for p := range r.Data {
		paths = append(paths, p)
	}
	slices.Sort(paths)
	return paths
}

// Files returns the image's files, absolute path to content.
func (r *Record) Files(rules imagespec.Rules) (map[string][]byte, error) {
	entries, err := r.entries(rules)
	if err != nil {
		return nil, err
	}
	files := make(map[string][]byte, len(entries))
	for _, e := range entries {
		files[e.Path] = e.Data
	}
	return files, nil
}

// entries validates the record and lists the image's files.
func (r *Record) entries(rules imagespec.Rules) ([]squashfs.Entry, error) {
	if err := r.Validate(rules); err != nil {
		return nil, err
	}
	meta, err := imagespec.MarshalMetadata(imagespec.ImageMetadata{
		Format: imagespec.FormatVersion, Serial: r.Serial, Generation: r.Generation, IssuedAt: r.IssuedAt.UTC().Truncate(time.Second),
	})
	if err != nil {
		return nil, err
	}
	file := func(p string, data []byte) squashfs.Entry {
		return squashfs.Entry{Path: p, Mode: imagespec.FileMode, Data: data}
	}
	entries := make([]squashfs.Entry, 0, 7+len(r.Data))
	entries = append(entries,
		file(imagespec.Hostname, line(r.Hostname)),
		file(imagespec.SerialNumber, line(r.Serial)),
		file(imagespec.MQTTClientID, line(r.MQTTClientID)),
		file(imagespec.MQTTGroupID, line(r.MQTTGroupID)),
		file(imagespec.Metadata, meta),
		file(imagespec.ExtensionRelease, []byte(imagespec.ExtensionReleaseContent)))
	if r.MachineID != "" {
		entries = append(entries, file(imagespec.MachineID, line(r.MachineID)))
	}
	for p, c := range r.Data {
		entries = append(entries, file(p, []byte(c)))
	}
	return entries, nil
}

func line(s string) []byte { return []byte(s + "\n") }

// Build returns the squashfs image of a record.
func Build(r *Record, rules imagespec.Rules) ([]byte, error) {
	entries, err := r.entries(rules)
	if err != nil {
		return nil, err
	}
	img, err := squashfs.Build(entries, squashfs.Options{})
	if err != nil {
		return nil, fmt.Errorf("build image of %s: %w", r.Serial, err)
	}
	return img, nil
}

// BuildBundle builds a record's image and signs it into a bundle; it
// returns the bundle and the bare image.
func BuildBundle(r *Record, rules imagespec.Rules, s *signedimage.Signer) (bundle, img []byte, err error) {
	// The image's /etc/prov/image.json must carry the statement's issue
	// time, which the signer moves up to when its chain began (a device
	// compares the two byte for byte).
	dated := *r
	dated.IssuedAt = s.IssueTime(r.IssuedAt)
	img, err = Build(&dated, rules)
	if err != nil {
		return nil, nil, err
	}
	bundle, err = s.Sign(signedimage.Statement{Serial: r.Serial, Generation: r.Generation, IssuedAt: dated.IssuedAt}, img)
	if err != nil {
		return nil, nil, err
	}
	return bundle, img, nil
}

// ParseRecord decodes a record from JSON strictly (unknown fields are an
// error: a misspelt field must not silently build an image without it).
func ParseRecord(data []byte) (*Record, error) {
	dec := json.NewDecoder(strings.NewReader(string(data)))
	dec.DisallowUnknownFields()
	var r Record
	if err := dec.Decode(&r); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadRecord, err)
	}
	if dec.More() {
		return nil, fmt.Errorf("%w: data after the JSON object", ErrBadRecord)
	}
	return &r, nil
}
