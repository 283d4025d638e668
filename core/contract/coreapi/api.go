// Package coreapi is the wire contract of core's HTTP API and of its MQTT
// notifications: the route table (routes.go: method, path, roles), headers,
// request and response bodies, status and error codes, the error body, and
// a small client. Identity comes only from the verified client certificate;
// a device asking about another serial gets 404, the same answer as for a
// serial that does not exist.
//
// Contract: linked by prov-core, prov-proxy and prov-device. A change here
// reaches boards in the field, which keep the client they were built with:
// add, never rename or remove.
package coreapi

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"fmt"
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
	// EKSHA256 is the endorsement key of the TPM the proxy attested the
	// key resident in (enrollapi.EKHash, 64 hex digits); empty for a
	// software key. The certificate says the same (pki.KeyAttestationOf).
	EKSHA256 string `json:"ekSha256,omitempty"`
	// Replaced is when a re-enrollment with another key replaced this
	// certificate's key (core accepts it no more); set by core, ignored in
	// a request.
	Replaced *time.Time `json:"replaced,omitempty"`
}

// Device is a device as core describes it. Devices asking about themselves
// get only Serial, Generation, Status, IssuedAt and Topic.
type Device struct {
	Serial       string            `json:"serial"`
	Generation   uint64            `json:"generation"`
	Status       DeviceStatus      `json:"status"`
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
	// admins): what the re-enrollment policy decides on, and the keys core
	// accepts from the device.
	Issued []IssuedCertificate `json:"issued,omitempty"`
	// PendingCARevocations are the device's certificates core has still to
	// revoke at step-ca (admins). A revoke is acknowledged once it is
	// stored; core retries each one until step-ca confirms it.
	PendingCARevocations []PendingRevocation `json:"pendingCaRevocations,omitempty"`
	// Held: a rollout keeps the device at its group's earlier data
	// (admins).
	Held bool `json:"held,omitempty"`
	// Report is the device's latest report of what it runs (admins).
	Report *DeviceReport `json:"report,omitempty"`
}

// PendingRevocation is a certificate of a revoked device that step-ca has
// not confirmed as revoked yet.
type PendingRevocation struct {
	Serial      string    `json:"serial"` // the certificate's, decimal
	Since       time.Time `json:"since"`
	Attempts    int       `json:"attempts"`
	LastError   string    `json:"lastError,omitempty"`
	NextAttempt time.Time `json:"nextAttempt"`
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
	// Rollout is the group's active rollout (0: none): its data changes
	// only through it meanwhile.
	Rollout uint64 `json:"rollout,omitempty"`
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

// Error is the body of every JSON error of core's API and of the proxy's.
// Message is safe to show and names the field or rule that refused; it
// never holds internal errors, keys or tokens.
type Error struct {
	Code    ErrorCode `json:"error"`
	Message string    `json:"message"`
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

// DeviceClientIDPrefix starts the MQTT client ID of every device on
// core's embedded broker.
const DeviceClientIDPrefix = "prov-device-"

// DeviceClientID is the one MQTT client ID the embedded broker accepts
// from a device: bound to its certificate, so that no device can take
// over another's session.
func DeviceClientID(serial string) string { return DeviceClientIDPrefix + serial }

// KeySHA256 is the digest of a public key that IssuedCertificate carries:
// SHA-256 of its DER SubjectPublicKeyInfo, hex. Core accepts a device's
// certificate only if its key has one of the digests recorded for it.
func KeySHA256(pub any) (string, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return "", fmt.Errorf("key digest: %w", err)
	}
	sum := sha256.Sum256(der)
	return hex.EncodeToString(sum[:]), nil
}

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
