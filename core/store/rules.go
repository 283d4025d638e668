package store

import (
	"fmt"
	"slices"
	"strings"
	"time"
)

// The rules of a device's changes, the same on every engine: an engine
// reads the device in its own transaction, applies one of these to it and,
// when a rule returns an event, writes the record and the event in that
// transaction (nil: nothing changed, nothing to write). Keeping them here
// keeps the engines from drifting apart on what a change means.

// Advance moves an active device to its next version after fn changed it;
// fn returns the detail of the audit event. A revoked device is refused
// with ErrRevoked before fn runs.
func Advance(v *View, action, actor string, now time.Time, fn func(*View) (map[string]string, error)) (*Event, error) {
	if v.Status == Revoked {
		return nil, fmt.Errorf("device %s: %w", v.Serial, ErrRevoked)
	}
	detail, err := fn(v)
	if err != nil {
		return nil, err
	}
	v.Version++
	v.VersionAt, v.UpdatedAt = now, now
	return &Event{At: now, Actor: actor, Subject: "device/" + v.Serial, Action: action, Generation: v.Generation(), Detail: detail}, nil
}

// MarkRevoked marks a device revoked; nil if it already was (revoking
// again only queues its certificates at the CA again).
func MarkRevoked(d *Device, actor, reason string, now time.Time) *Event {
	if d.Status == Revoked {
		return nil
	}
	d.Status, d.UpdatedAt = Revoked, now
	return &Event{At: now, Actor: actor, Subject: "device/" + d.Serial, Action: "revoke", Detail: map[string]string{"reason": reason}}
}

// LateReason is why a certificate that became known after its device's
// revoke is queued for revocation at the CA.
const LateReason = "device revoked: a certificate that became known after the revoke"

// RevokedReason is the CA revocation reason of a device revoked for reason.
func RevokedReason(reason string) string { return "device revoked: " + reason }

// AddSeen remembers a certificate the device was seen with (the last
// MaxCertificates of them); nil if it already was.
func AddSeen(d *Device, c Certificate, now time.Time) *Event {
	if d.HasCertificate(c.Fingerprint) {
		return nil
	}
	c.FirstSeen = now
	d.Certificates = append(d.Certificates, c)
	if len(d.Certificates) > MaxCertificates {
		d.Certificates = d.Certificates[len(d.Certificates)-MaxCertificates:]
	}
	d.UpdatedAt = now
	return &Event{At: now, Actor: "device/" + d.Serial, Subject: "device/" + d.Serial, Action: "certificate seen",
		Detail: map[string]string{"serial": c.Serial, "fingerprint": c.Fingerprint}}
}

// AddIssued remembers a certificate a proxy had issued for the device (the
// last MaxCertificates of them) and pins its keys; nil if it already was.
func AddIssued(d *Device, c Issued, now time.Time) *Event {
	if slices.ContainsFunc(d.Issued, func(x Issued) bool { return x.Serial == c.Serial }) {
		return nil
	}
	// A certificate for another key is a re-enrollment the policy allowed
	// (deny and same-key-only refuse one at admission): the keys before it
	// are replaced, and core accepts them no more.
	var replaced []string
	for i := range d.Issued {
		if x := &d.Issued[i]; x.KeySHA256 != c.KeySHA256 && x.Replaced == nil {
			at := now.UTC()
			x.Replaced = &at
			replaced = append(replaced, x.Serial)
		}
	}
	d.Issued = append(d.Issued, c)
	if len(d.Issued) > MaxCertificates {
		d.Issued = d.Issued[len(d.Issued)-MaxCertificates:]
	}
	d.KeysPinned = true
	d.UpdatedAt = now
	ev := &Event{At: now, Actor: c.IssuedBy, Subject: "device/" + d.Serial, Action: "certificate issued",
		Detail: map[string]string{"serial": c.Serial, "key": c.KeySHA256, "notAfter": c.NotAfter.UTC().Format(time.RFC3339)}}
	if c.EKSHA256 != "" {
		ev.Detail["ek"] = c.EKSHA256
	}
	if len(replaced) > 0 {
		ev.Detail["replaces"] = strings.Join(replaced, ",")
	}
	return ev
}

// PinKey pins c's key on a device whose record predates key pinning; nil
// if the device already pins keys (another key may have been pinned
// first: the caller finds it in Issued).
func PinKey(d *Device, c Issued, now time.Time) *Event {
	if d.PinsKeys() {
		return nil
	}
	d.Issued, d.KeysPinned, d.UpdatedAt = []Issued{c}, true, now
	return &Event{At: now, Actor: c.IssuedBy, Subject: "device/" + d.Serial, Action: "key pinned on first use",
		Detail: map[string]string{"serial": c.Serial, "key": c.KeySHA256}}
}
