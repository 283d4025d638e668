// Package state is the device's state directory: its key and certificate,
// its enrollment, the installed images with the current and previous
// pointers, the high-water mark, the last check's outcome, the health
// check's trial and bad generations, and the latest report to core. Every file
// is replaced atomically (temporary file, fsync, rename, fsync of the
// directory), so a power cut leaves either the old or the new version.
//
// Layout (the directory is 0700, the key 0600):
//
//	key.pem           the device's private key (never leaves the device), or
//	key.tpm           its key in the board's TPM: the TPM's wrapped blob only
//	                  (deviceclient/tpmkey; only that TPM can load it)
//	cert.pem          its certificate chain, leaf first
//	root.pem          the deployment's root
//	device.json       the enrollment: serial, board, hardware ID, URLs, topic
//	highwater.json    the highest generation accepted and its issue time
//	floor.json        the clock floor: the latest time verified chains proved
//	status.json       the last check, update and error (for `status`)
//	trial.json        the generation on trial: health check not passed yet
//	healthy.json      the last image found healthy
//	bad.json          generations that failed here (never installed again)
//	report.json       the latest report to core, and whether core has it
//	images/*.bundle   signed bundles exactly as received and verified
//	current, previous symlinks into images/
//	lock              flock'd by whichever prov-device process changes state
package state

import (
	"crypto"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/fleetprov/prov/internal/atomicfile"
	"github.com/fleetprov/prov/pki"
)

// Files in the directory.
const (
	KeyFile       = "key.pem"
	TPMKeyFile    = "key.tpm"
	CertFile      = "cert.pem"
	RootFile      = "root.pem"
	DeviceFile    = "device.json"
	HighWaterFile = "highwater.json"
	FloorFile     = "floor.json"
	StatusFile    = "status.json"
	// InstalledFile names the image last made current. It is a regular
	// file replaced at every switch, which a systemd path unit can watch
	// (it cannot watch the current pointer: inotify follows the link).
	InstalledFile = "installed.json"
	ImagesDir     = "images"
	Current       = "current"
	Previous      = "previous"
	lockFile      = "lock"
)

// Dir is an open state directory.
type Dir struct {
	Path string
	lock *os.File
	mu   sync.Mutex // the flock is per open file, so goroutines need this too
}

// Device is the enrollment record.
type Device struct {
	Serial     string    `json:"serial"`
	Board      string    `json:"board"`
	HardwareID string    `json:"hardwareId"` // canonical
	CoreURL    string    `json:"coreUrl"`
	CAURL      string    `json:"caUrl"`
	MQTTURL    string    `json:"mqttUrl"`
	MQTTTopic  string    `json:"mqttTopic"`
	EnrolledAt time.Time `json:"enrolledAt"`
}

// HighWater is the newest statement accepted: no lower generation is ever
// installed again, and its issue time is a floor for the clock.
type HighWater struct {
	Generation uint64    `json:"generation"`
	IssuedAt   time.Time `json:"issuedAt"`
}

// Status is what `prov-device status` shows besides the files above.
type Status struct {
	LastCheck  time.Time `json:"lastCheck,omitzero"`
	LastUpdate time.Time `json:"lastUpdate,omitzero"`
	LastError  string    `json:"lastError,omitempty"`
	// Refusal and RefusalStep name the last error when it was a bundle
	// refused, in the words and step numbers of docs/image-format.md
	// ("rollback", 20), and RefusalCheck the inspection's check when step
	// 25 refused ("file-size"). Shown only while LastError is set.
	Refusal      string    `json:"refusal,omitempty"`
	RefusalStep  int       `json:"refusalStep,omitempty"`
	RefusalCheck string    `json:"refusalCheck,omitempty"`
	ErrorAt      time.Time `json:"errorAt,omitzero"`
	ETag         string    `json:"etag,omitempty"` // of the current bundle at core
}

// Open opens (creating) the state directory. Readers need nothing more;
// whatever changes it holds Lock.
func Open(path string) (*Dir, error) {
	if err := os.MkdirAll(filepath.Join(path, ImagesDir), 0o700); err != nil {
		return nil, fmt.Errorf("state directory: %w", err)
	}
	if err := os.Chmod(path, 0o700); err != nil { //nolint:gosec // a directory
		return nil, fmt.Errorf("state directory: %w", err)
	}
	f, err := os.OpenFile(filepath.Join(path, lockFile), os.O_CREATE|os.O_RDWR, 0o600) //nolint:gosec // our directory
	if err != nil {
		return nil, fmt.Errorf("state directory: %w", err)
	}
	return &Dir{Path: path, lock: f}, nil
}

// Lock waits until no other goroutine or prov-device process changes the
// directory, and returns the function that lets them again.
func (d *Dir) Lock() (func(), error) {
	d.mu.Lock()
	if err := syscall.Flock(int(d.lock.Fd()), syscall.LOCK_EX); err != nil { //nolint:gosec // fd fits
		d.mu.Unlock()
		return nil, fmt.Errorf("state directory lock: %w", err)
	}
	return func() {
		_ = syscall.Flock(int(d.lock.Fd()), syscall.LOCK_UN) //nolint:gosec // fd fits
		d.mu.Unlock()
	}, nil
}

// Close closes the directory.
func (d *Dir) Close() error { return d.lock.Close() }

// File is the path of a file in the directory.
func (d *Dir) File(name string) string { return filepath.Join(d.Path, name) }

// WriteFile replaces name atomically and durably.
func (d *Dir) WriteFile(name string, data []byte, mode fs.FileMode) error {
	return atomicfile.WriteFile(d.File(name), data, mode)
}

func (d *Dir) readJSON(name string, v any) error {
	data, err := os.ReadFile(d.File(name))
	if err != nil {
		return err
	}
	if err := json.Unmarshal(data, v); err != nil {
		return fmt.Errorf("%s: %w", d.File(name), err)
	}
	return nil
}

func (d *Dir) writeJSON(name string, v any, mode fs.FileMode) error {
	data, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return d.WriteFile(name, append(data, '\n'), mode)
}

// Device reads the enrollment.
func (d *Dir) Device() (*Device, error) {
	var dev Device
	if err := d.readJSON(DeviceFile, &dev); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("%w: %s has no %s (run prov-device enroll)", ErrNotEnrolled, d.Path, DeviceFile)
		}
		return nil, err
	}
	if err := pki.ValidateSerial(dev.Serial); err != nil {
		return nil, fmt.Errorf("%s: %w", d.File(DeviceFile), err)
	}
	return &dev, nil
}

// SetDevice writes the enrollment.
func (d *Dir) SetDevice(dev *Device) error { return d.writeJSON(DeviceFile, dev, 0o644) }

// HighWater reads the high-water mark (zero before the first install).
func (d *Dir) HighWater() (HighWater, error) {
	var hw HighWater
	if err := d.readJSON(HighWaterFile, &hw); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return hw, err
	}
	return hw, nil
}

// RaiseHighWater raises the mark to hw; it never lowers it.
func (d *Dir) RaiseHighWater(hw HighWater) error {
	old, err := d.HighWater()
	if err != nil {
		return err
	}
	if hw.Generation < old.Generation || (hw.Generation == old.Generation && !hw.IssuedAt.After(old.IssuedAt)) {
		return nil
	}
	if hw.IssuedAt.Before(old.IssuedAt) {
		hw.IssuedAt = old.IssuedAt
	}
	return d.writeJSON(HighWaterFile, hw, 0o644)
}

// Status reads the last outcome (zero if none).
func (d *Dir) Status() Status {
	var s Status
	_ = d.readJSON(StatusFile, &s)
	return s
}

// UpdateStatus changes the status file; the caller must not hold Lock.
func (d *Dir) UpdateStatus(fn func(*Status)) error {
	unlock, err := d.Lock()
	if err != nil {
		return err
	}
	defer unlock()
	s := d.Status()
	fn(&s)
	return d.writeJSON(StatusFile, s, 0o644)
}

// Identity loads the device's key and certificate chain.
func (d *Dir) Identity() (*pki.KeyPair, error) {
	kp, err := pki.LoadKeyPair(d.File(CertFile), d.File(KeyFile))
	if err != nil {
		return nil, fmt.Errorf("device identity: %w", err)
	}
	return kp, nil
}

// SignerIdentity loads the device's certificate chain for its key in the
// TPM (a signer over key.tpm).
func (d *Dir) SignerIdentity(key crypto.Signer) (*pki.KeyPair, error) {
	kp, err := pki.LoadSignerKeyPair(d.File(CertFile), key)
	if err != nil {
		return nil, fmt.Errorf("device identity: %w", err)
	}
	return kp, nil
}

// TPMKey is the TPM key file, if the device's key is in its TPM (nil, nil
// if it is a software key).
func (d *Dir) TPMKey() ([]byte, error) {
	data, err := os.ReadFile(d.File(TPMKeyFile))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	return data, err
}

// Roots loads the deployment's root.
func (d *Dir) Roots() (*pki.TrustBundle, error) { return pki.LoadTrustBundle(d.File(RootFile)) }

// Leaf is the device certificate (for expiry checks), without its key.
func (d *Dir) Leaf() (*x509.Certificate, error) {
	data, err := os.ReadFile(d.File(CertFile))
	if err != nil {
		return nil, err
	}
	certs, err := pki.ParseCertificates(data)
	if err != nil || len(certs) == 0 {
		return nil, fmt.Errorf("%s: %w", d.File(CertFile), err)
	}
	return certs[0], nil
}

// Image is an installed bundle.
type Image struct {
	Name string // file name in images/
	Path string
}

// ImageName is the file name in images/ of the bundle of generation whose
// image has SHA-256 sha256 (hex): the generation zero-padded, so that
// names sort as generations do, and the digest's first 16 hex digits.
func ImageName(generation uint64, sha256 string) string {
	return fmt.Sprintf("%020d-%s.bundle", generation, sha256[:16])
}

// Version is what an image's name (ImageName) says: its generation and
// the first 16 hex digits of its image's digest, which is what core's
// ETag of that bundle holds too. ok is false for a name ImageName did not
// make.
func (i Image) Version() (generation uint64, sha16 string, ok bool) {
	gen, sha, found := strings.Cut(strings.TrimSuffix(i.Name, ".bundle"), "-")
	if !found || len(gen) != 20 || len(sha) != 16 || strings.Trim(sha, "0123456789abcdef") != "" {
		return 0, "", false
	}
	g, err := strconv.ParseUint(gen, 10, 64)
	if err != nil {
		return 0, "", false
	}
	return g, sha, true
}

// Pointer reads the current or previous pointer; ok is false when unset.
func (d *Dir) Pointer(which string) (Image, bool, error) {
	target, err := os.Readlink(d.File(which))
	if errors.Is(err, fs.ErrNotExist) {
		return Image{}, false, nil
	}
	if err != nil {
		return Image{}, false, err
	}
	name := filepath.Base(target)
	if target != filepath.Join(ImagesDir, name) || !strings.HasSuffix(name, ".bundle") {
		return Image{}, false, fmt.Errorf("%s points to %q, outside %s/", which, target, ImagesDir)
	}
	return Image{Name: name, Path: filepath.Join(d.Path, ImagesDir, name)}, true, nil
}

// Installed is the content of InstalledFile.
type Installed struct {
	Image      string `json:"image"`
	Generation uint64 `json:"generation"`
}

// Installed reads which image was last made current; zero if none.
func (d *Dir) Installed() (Installed, error) {
	var in Installed
	if err := d.readJSON(InstalledFile, &in); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return in, err
	}
	return in, nil
}

// SetInstalled records the image just made current, replacing the file,
// unless it says so already.
func (d *Dir) SetInstalled(in Installed) error {
	if old, err := d.Installed(); err == nil && old == in {
		return nil
	}
	return d.writeJSON(InstalledFile, in, 0o644)
}

// SetPointer points which at images/name atomically: a new symlink renamed
// over the old one.
func (d *Dir) SetPointer(which, name string) error {
	tmp := d.File("." + which + ".tmp")
	_ = os.Remove(tmp)
	if err := os.Symlink(filepath.Join(ImagesDir, name), tmp); err != nil {
		return err
	}
	if err := os.Rename(tmp, d.File(which)); err != nil {
		return err
	}
	return atomicfile.SyncDir(d.Path)
}

// CheckID refuses a board other than the one that enrolled.
func (d *Device) CheckID(board, canonical string) error {
	if board != d.Board || canonical != d.HardwareID {
		return fmt.Errorf("%w: enrolled as %s %s (serial %s), this board reads %s %s; the old identity is not used: re-enroll this board at a factory proxy",
			ErrIDChanged, d.Board, d.HardwareID, d.Serial, board, canonical)
	}
	return nil
}
