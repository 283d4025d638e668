package store

import (
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/fleetprov/prov/core/contract/coreapi"
)

// Status of a device: the contract's, stored as its string.
type Status = coreapi.DeviceStatus

// Statuses.
const (
	Active  = coreapi.StatusActive
	Revoked = coreapi.StatusRevoked
)

// Immutable is what a device gets once, at registration, and keeps.
type Immutable struct {
	Hostname     string `json:"hostname"`
	MachineID    string `json:"machineId,omitempty"`
	MQTTClientID string `json:"mqttClientId"`
	MQTTGroupID  string `json:"mqttGroupId"`
}

// Certificate is a client certificate a device was seen with.
type Certificate struct {
	Fingerprint string    `json:"fingerprint"` // SHA-256 of the DER, hex
	Serial      string    `json:"serial"`      // decimal, as step-ca writes it
	NotAfter    time.Time `json:"notAfter"`
	FirstSeen   time.Time `json:"firstSeen"`
}

// MaxCertificates bounds the certificates remembered per device.
const MaxCertificates = 16

// Issued is a certificate a proxy had issued for a device at enrollment.
type Issued struct {
	Serial    string    `json:"serial"`    // the certificate's, decimal
	KeySHA256 string    `json:"keySha256"` // SHA-256 of its SubjectPublicKeyInfo, hex
	NotBefore time.Time `json:"notBefore"`
	NotAfter  time.Time `json:"notAfter"`
	IssuedBy  string    `json:"issuedBy"` // the proxy's identity
	// EKSHA256 is the endorsement key of the TPM the proxy attested the
	// key resident in (enrollapi.EKHash); empty for a software key.
	EKSHA256 string `json:"ekSha256,omitempty"`
	// Replaced is when a re-enrollment with another key (policy allow)
	// replaced this certificate's key: core no longer accepts it, so the
	// old card, and its certificates renewed at step-ca, stop working.
	Replaced *time.Time `json:"replaced,omitempty"`
}

// Device is a registry record.
type Device struct {
	Serial       string            `json:"serial"`
	Board        string            `json:"board"`
	HardwareID   string            `json:"hardwareId"` // canonical
	Group        string            `json:"group"`
	Immutable    Immutable         `json:"immutable"`
	Data         map[string]string `json:"data,omitempty"` // the device's own mutable data
	Version      uint64            `json:"version"`
	VersionAt    time.Time         `json:"versionAt"`
	Status       Status            `json:"status"`
	Certificates []Certificate     `json:"certificates,omitempty"`
	Issued       []Issued          `json:"issued,omitempty"`
	// KeysPinned: core accepts the device only with a key in Issued. Every
	// record made since core pins keys says so; a record made before, with
	// nothing in Issued, has the first key it is seen with pinned
	// (PinFirstKey).
	KeysPinned   bool      `json:"keysPinned,omitempty"`
	RegisteredBy string    `json:"registeredBy"`
	CreatedAt    time.Time `json:"createdAt"`
	UpdatedAt    time.Time `json:"updatedAt"`
}

// HasCertificate reports whether the device was already seen with a
// certificate of that fingerprint.
func (d *Device) HasCertificate(fingerprint string) bool {
	return slices.ContainsFunc(d.Certificates, func(x Certificate) bool { return x.Fingerprint == fingerprint })
}

// PinsKeys reports whether the device is accepted only with a key in
// Issued; false only for a record made before core pinned keys that has
// not been seen since.
func (d *Device) PinsKeys() bool { return d.KeysPinned || len(d.Issued) > 0 }

// KeyRecorded reports whether keySHA256 is the key of a certificate
// recorded for the device.
func (d *Device) KeyRecorded(keySHA256 string) bool {
	return slices.ContainsFunc(d.Issued, func(x Issued) bool { return x.KeySHA256 == keySHA256 && x.Replaced == nil })
}

// KeyAttested returns the endorsement key a recorded key was attested in,
// or "" for a software key (or one not recorded).
func (d *Device) KeyAttested(keySHA256 string) string {
	for _, x := range d.Issued {
		if x.KeySHA256 == keySHA256 && x.EKSHA256 != "" && x.Replaced == nil {
			return x.EKSHA256
		}
	}
	return ""
}

// CertificateSerials are the serials of every certificate known for the
// device, issued or seen, each once.
func (d *Device) CertificateSerials() []string {
	var out []string
	for _, c := range d.Issued {
		out = append(out, c.Serial)
	}
	for _, c := range d.Certificates {
		out = append(out, c.Serial)
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// Group is a device group's mutable data.
type Group struct {
	Name      string            `json:"name"`
	Data      map[string]string `json:"data,omitempty"`
	Version   uint64            `json:"version"`
	VersionAt time.Time         `json:"versionAt"`
	CreatedAt time.Time         `json:"createdAt"`
	// Rollout is the group's active rollout (0: none): while it runs the
	// group's data changes only through it (ErrRolloutActive).
	Rollout uint64 `json:"rollout,omitempty"`
}

// View is a device with its group: what its image is built from. A
// device a rollout holds (Held) is seen with the version of its group's
// data it is held at, so its generation and image stay what they were.
type View struct {
	Device
	GroupVersion   uint64
	GroupVersionAt time.Time
	GroupData      map[string]string
	Held           bool
}

// NewView is device d (copied) with group g.
func NewView(d *Device, g *Group) *View {
	return &View{Device: *d, GroupVersion: g.Version, GroupVersionAt: g.VersionAt, GroupData: g.Data}
}

// Generation is the device's image generation.
func (v *View) Generation() uint64 { return v.Version + v.GroupVersion }

// IssuedAt is when the current generation was made.
func (v *View) IssuedAt() time.Time {
	if v.GroupVersionAt.After(v.VersionAt) {
		return v.GroupVersionAt
	}
	return v.VersionAt
}

// EffectiveData is the group's data overlaid with the device's own.
func (v *View) EffectiveData() map[string]string {
	out := maps.Clone(v.GroupData)
	if out == nil {
		out = map[string]string{}
	}
	maps.Copy(out, v.Data)
	return out
}

// Event is one audit record.
type Event struct {
	Seq        uint64            `json:"seq,omitempty"` // stored in the key, not the value
	At         time.Time         `json:"at"`
	Actor      string            `json:"actor"`
	Subject    string            `json:"subject,omitempty"` // device/<serial> or group/<name>; in the key
	Action     string            `json:"action"`
	Generation uint64            `json:"generation,omitempty"`
	Detail     map[string]string `json:"detail,omitempty"`
}

// Change is a change of mutable data: keys to set and keys to remove.
type Change struct {
	Set   map[string]string
	Unset []string
}

func (c Change) Apply(data map[string]string) map[string]string {
	out := maps.Clone(data)
	if out == nil {
		out = map[string]string{}
	}
	maps.Copy(out, c.Set)
	for _, k := range c.Unset {
		delete(out, k)
	}
	if len(out) == 0 {
		return nil
	}
	return out
}

// Detail is the change as its audit event shows it: the keys and the
// sizes of the values, never the values themselves.
func (c Change) Detail() map[string]string {
	d := map[string]string{}
	for _, k := range slices.Sorted(maps.Keys(c.Set)) {
		d["set "+k] = fmt.Sprintf("%d bytes", len(c.Set[k]))
	}
	for _, k := range c.Unset {
		d["unset "+k] = ""
	}
	return d
}
