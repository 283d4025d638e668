// Package coreapi is the wire contract of core's HTTP API and of its MQTT
// notifications: paths, headers, request and response bodies, the error
// body, and a small client. The proxy, the admin CLI and the device client
// use it; it links the standard library only.
//
// Identity comes only from the verified client certificate; roles:
//
//	POST  /v1/devices                        proxy   register (idempotent)
//	POST  /v1/devices/{serial}/certificates  proxy   record a certificate issued at enrollment
//	GET   /v1/devices                        admin   list (?after=SERIAL&limit=N)
//	GET   /v1/devices/{serial}               admin (full), device (its own status)
//	GET   /v1/devices/{serial}/bundle        device (its own), proxy (enrollment)
//	PATCH /v1/devices/{serial}/data          admin   If-Match: "<generation>"
//	POST  /v1/devices/{serial}/reprovision   admin
//	POST  /v1/devices/{serial}/revoke        admin
//	GET   /v1/devices/{serial}/audit         admin
//	GET   /v1/groups/{group}                 admin
//	PATCH /v1/groups/{group}/data            admin   If-Match: "<version>"
//	GET   /v1/groups/{group}/audit           admin
//	GET   /v1/backup                         admin   a consistent copy of the store (bbolt file)
//	GET   /healthz, /readyz, /metrics        anyone, no certificate needed
//
// A device asking about another serial gets 404, the same answer as for a
// serial that does not exist.
package coreapi

import (
	"strconv"
	"strings"
	"time"
)

// Media types and headers.
const (
	MediaTypeJSON   = "application/json"
	MediaTypeBundle = "application/vnd.prov.bundle"
	// HeaderGeneration carries a bundle's generation beside its ETag.
	HeaderGeneration = "X-Prov-Generation"
)

// MaxRequestBody bounds every request body core reads.
const MaxRequestBody = 2 << 20

// RegisterRequest is what a proxy sends for a new device.
type RegisterRequest struct {
	Board      string `json:"board"`
	HardwareID string `json:"hardwareId"`
	// Group is the device group; empty means "default".
	Group string `json:"group,omitempty"`
}

// Certificate is a client certificate core has seen a device use.
type Certificate struct {
	Fingerprint string    `json:"fingerprint"`
	Serial      string    `json:"serial"`
	NotAfter    time.Time `json:"notAfter"`
	FirstSeen   time.Time `json:"firstSeen"`
}

// IssuedCertificate is a certificate a proxy had issued for a device.
type IssuedCertificate struct {
	Serial    string    `json:"serial"`
	KeySHA256 string    `json:"keySha256"`
	NotBefore time.Time `json:"notBefore"`
	NotAfter  time.Time `json:"notAfter"`
	IssuedBy  string    `json:"issuedBy,omitempty"`
}

// Device is a device as core describes it. Devices asking about themselves
// get only Serial, Generation, Status, IssuedAt and Topic.
type Device struct {
	Serial       string            `json:"serial"`
	Generation   uint64            `json:"generation"`
	Status       string            `json:"status"`
	IssuedAt     time.Time         `json:"issuedAt"`
	Topic        string            `json:"topic"`
	Board        string            `json:"board,omitempty"`
	Group        string            `json:"group,omitempty"`
	Hostname     string            `json:"hostname,omitempty"`
	MQTTClientID string            `json:"mqttClientId,omitempty"`
	MQTTGroupID  string            `json:"mqttGroupId,omitempty"`
	Data         map[string]string `json:"data,omitempty"`    // effective: group data overlaid with the device's own
	OwnData      map[string]string `json:"ownData,omitempty"` // the device's own overrides
	RegisteredBy string            `json:"registeredBy,omitempty"`
	CreatedAt    *time.Time        `json:"createdAt,omitempty"`
	Certificates []Certificate     `json:"certificates,omitempty"`
	// Issued are the certificates proxies had issued (for proxies and
	// admins): what the re-enrollment policy decides on.
	Issued []IssuedCertificate `json:"issued,omitempty"`
}

// DeviceList is a page of devices.
type DeviceList struct {
	Devices []Device `json:"devices"`
	// Next is the cursor of the next page (?after=Next); empty at the end.
	Next string `json:"next,omitempty"`
}

// DataChange sets and removes mutable data files (path -> content).
type DataChange struct {
	Set   map[string]string `json:"set,omitempty"`
	Unset []string          `json:"unset,omitempty"`
}

// RevokeRequest says why a device is revoked.
type RevokeRequest struct {
	Reason string `json:"reason"`
}

// Group is a device group's mutable data.
type Group struct {
	Name      string            `json:"name"`
	Version   uint64            `json:"version"`
	VersionAt time.Time         `json:"versionAt"`
	Data      map[string]string `json:"data,omitempty"`
}

// Event is an audit record.
type Event struct {
	Seq        uint64            `json:"seq"`
	At         time.Time         `json:"at"`
	Actor      string            `json:"actor"`
	Subject    string            `json:"subject"`
	Action     string            `json:"action"`
	Generation uint64            `json:"generation,omitempty"`
	Detail     map[string]string `json:"detail,omitempty"`
}

// Error is the body of every error response. Message is safe to show; it
// never holds internal errors, keys or tokens.
type Error struct {
	Code    string `json:"error"`
	Message string `json:"message"`
}

// Notification is what core publishes on a device's topic when it has a
// new generation (QoS 1, retained). It only tells the device to ask core,
// over mTLS, for its bundle: a forged one costs a request, nothing more.
type Notification struct {
	Serial     string `json:"serial"`
	Generation uint64 `json:"generation"`
	SHA256     string `json:"sha256,omitempty"`
}

// Headers of a backup: what the copy holds.
const (
	HeaderBackupDevices = "X-Prov-Devices"
	HeaderBackupGroups  = "X-Prov-Groups"
)

// TopicPrefix is the prefix of device topics.
const TopicPrefix = "prov/devices/"

// DeviceTopic is the topic a device subscribes to.
func DeviceTopic(serial string) string { return TopicPrefix + serial }

// ETag is the entity tag of a generation's bundle.
func ETag(generation uint64, sha256 string) string {
	return `"` + strconv.FormatUint(generation, 10) + "-" + sha256[:16] + `"`
}

// IfMatch formats a version for an If-Match header.
func IfMatch(version uint64) string { return `"` + strconv.FormatUint(version, 10) + `"` }

// ParseIfMatch reads a version from an If-Match header.
func ParseIfMatch(h string) (uint64, bool) {
	s := strings.TrimSpace(h)
	if len(s) < 3 || s[0] != '"' || s[len(s)-1] != '"' {
		return 0, false
	}
	v, err := strconv.ParseUint(s[1:len(s)-1], 10, 64)
	return v, err == nil
}
