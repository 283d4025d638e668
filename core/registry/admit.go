package registry

import (
	"crypto/x509"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/fleetprov/prov/core/contract/coreapi"
	"github.com/fleetprov/prov/core/store"
	"github.com/fleetprov/prov/pki"
)

// Where a device certificate is checked, in metrics and audit events.
const (
	ViaAPI  = "api"
	ViaMQTT = "mqtt"
)

// keyAuditEvery is how often a device's audit trail takes an event of
// refused keys: an attacker presenting certificates in a loop costs one
// write per device per interval, not one per attempt. The events count
// the refusals in between; the metric counts every one.
const keyAuditEvery = time.Minute

// Admit decides whether a device may use core with certificate leaf,
// whose verified identity is v's: refused when it is revoked
// (store.ErrRevoked; a certificate core did not know yet, such as one
// renewed while core could not reach the CA, is recorded and queued for
// revocation there) or when leaf's public key is not one recorded for it
// (ErrKeyNotEnrolled: counted, logged and written to the device's audit
// trail as a possible key compromise). Admitted, the certificate is
// remembered as seen.
//
// The keys recorded are those of the certificates proxies had issued at
// enrollment; renewal at step-ca keeps the key. A device whose record
// predates key pinning (no key recorded) has the key of the first
// certificate it is seen with pinned, with an audit event (trust on first
// use: those devices were enrolled before core could tell).
func (r *Registry) Admit(v *store.View, leaf *x509.Certificate, via string) error {
	if v.Status == store.Revoked {
		r.SeenCertificate(v, leaf)
		return fmt.Errorf("device %s: %w", v.Serial, store.ErrRevoked)
	}
	key, err := coreapi.KeySHA256(leaf.PublicKey)
	if err != nil {
		return fmt.Errorf("device %s: %w", v.Serial, err)
	}
	if !v.PinsKeys() {
		if v, err = r.pinFirstKey(v, leaf, key, via); err != nil {
			return err
		}
	}
	if !v.KeyRecorded(key) {
		r.keyNotEnrolled(v.Serial, leaf, key, via)
		return fmt.Errorf("device %s, certificate %s: %w", v.Serial, leaf.SerialNumber, ErrKeyNotEnrolled)
	}
	if r.policy.RequiresTPM(v.Group) && v.KeyAttested(key) == "" {
		r.keys.notAttested.Inc()
		r.log.Warn("a device of a group that requires a TPM key called with a key not attested at enrollment", "serial", v.Serial,
			"group", v.Group, "cert_serial", leaf.SerialNumber.String(), "via", via)
		return fmt.Errorf("device %s of group %s: %w", v.Serial, v.Group, ErrNotAttested)
	}
	r.SeenCertificate(v, leaf)
	return nil
}

// AdmitDevice is Admit for the embedded broker, which knows a device only
// by its certificate: an unknown serial is store.ErrNotFound.
func (r *Registry) AdmitDevice(serial string, leaf *x509.Certificate) error {
	v, err := r.store.Device(serial)
	if err != nil {
		return err
	}
	return r.Admit(v, leaf, ViaMQTT)
}

// pinFirstKey pins leaf's key for a device whose record predates key
// pinning, unless another call pinned one first.
func (r *Registry) pinFirstKey(v *store.View, leaf *x509.Certificate, key, via string) (*store.View, error) {
	id, _ := pki.IdentityOf(leaf) //nolint:errcheck // verified by the caller; only named here
	pinned, first, err := r.store.PinFirstKey(v.Serial, store.Issued{Serial: leaf.SerialNumber.String(), KeySHA256: key,
		NotBefore: leaf.NotBefore.UTC(), NotAfter: leaf.NotAfter.UTC(), IssuedBy: "core: first use by " + id.String()})
	if err != nil {
		return nil, fmt.Errorf("device %s: pin its key: %w", v.Serial, err)
	}
	if first {
		r.keys.pinned.Inc()
		r.log.Warn("device enrolled before key pinning: the key of its first certificate seen is pinned", "serial", v.Serial,
			"cert_serial", leaf.SerialNumber.String(), "key", key, "via", via)
	}
	return pinned, nil
}

// keyNotEnrolled counts, logs and audits a refused key.
func (r *Registry) keyNotEnrolled(serial string, leaf *x509.Certificate, key, via string) {
	r.keys.mismatch.WithLabelValues(via).Inc()
	refused, ok := r.keys.limit.allow(serial, time.Now())
	if !ok {
		return
	}
	r.log.Error("possible key compromise: a certificate for this device with a key core never recorded was refused",
		"serial", serial, "cert_serial", leaf.SerialNumber.String(), "key", key, "via", via, "refused", refused)
	id, _ := pki.IdentityOf(leaf) //nolint:errcheck // verified by the caller; only named here
	err := r.store.AppendAudit(store.Event{At: time.Now().UTC().Truncate(time.Second), Actor: id.String(), Subject: "device/" + serial,
		Action: "key not enrolled: possible key compromise", Detail: map[string]string{
			"serial": leaf.SerialNumber.String(), "key": key, "via": via, "notBefore": leaf.NotBefore.UTC().Format(time.RFC3339),
			"refused": strconv.Itoa(refused),
		}})
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		r.log.Warn("cannot audit a refused key", "serial", serial, "err", err)
	}
}

// keyMetrics count what Admit decides on keys.
type keyMetrics struct {
	mismatch    *prometheus.CounterVec
	pinned      prometheus.Counter
	notAttested prometheus.Counter
	limit       *auditLimit
}

func newKeyMetrics() *keyMetrics {
	return &keyMetrics{
		mismatch: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "prov_core_key_mismatch_total",
			Help: "Device certificates refused because their key is not one recorded for the device (possible key compromise), by where (api, mqtt).",
		}, []string{"via"}),
		pinned: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "prov_core_keys_pinned_on_first_use_total",
			Help: "Devices enrolled before key pinning whose first certificate's key core pinned.",
		}),
		notAttested: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "prov_core_keys_not_attested_total",
			Help: "Device certificates refused because the device's group requires a TPM-resident key and this key was not attested at enrollment.",
		}),
		limit: &auditLimit{every: keyAuditEvery, last: map[string]*auditSlot{}},
	}
}

func (m *keyMetrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{m.mismatch, m.pinned, m.notAttested}
}

// auditLimit lets one event per serial through per interval and counts the
// refusals it held back, which the serial's next event reports. It forgets
// a serial quiet for an interval with nothing held back, so it holds the
// serials refused within the last interval and those with refusals still
// to report (known devices only: Admit runs on registered serials).
type auditLimit struct {
	every time.Duration
	mu    sync.Mutex
	last  map[string]*auditSlot
	swept time.Time
}

type auditSlot struct {
	at    time.Time
	count int // refusals since the last event, this one included
}

// allow counts a refusal for serial and says whether to write an event
// now, with the refusals it stands for.
func (l *auditLimit) allow(serial string, now time.Time) (int, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if now.Sub(l.swept) > l.every {
		for s, slot := range l.last {
			if slot.count == 0 && now.Sub(slot.at) > l.every {
				delete(l.last, s)
			}
		}
		l.swept = now
	}
	slot, ok := l.last[serial]
	if !ok {
		l.last[serial] = &auditSlot{at: now}
		return 1, true
	}
	slot.count++
	if now.Sub(slot.at) < l.every {
		return 0, false
	}
	n := slot.count
	slot.at, slot.count = now, 0
	return n, true
}
