// Package registry is what core does when its API is called, below HTTP
// and above the store: register a device (its hardware ID checked by the
// serial rule, its immutable data made by the group's policy), record the
// certificates proxies issued and devices used, admit a device's
// certificate for the API and the broker (not revoked, and a key a proxy
// recorded: admit.go), change data (checked against the image rules
// first), reprovision, revoke (and every certificate at the CA, through a
// durable queue worked until the CA confirms: carevoke.go), and read
// devices, groups, bundles and the audit trail. After every change it
// tells the change worker, which builds the device's next bundle and
// notifies it.
//
// Errors are the store's sentinels, hwid's and imagespec's, and *BadInput
// for a request field that is wrong; the HTTP edge maps them.
package registry

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/fleetprov/prov/core/bundlecache"
	"github.com/fleetprov/prov/core/contract/coreapi"
	"github.com/fleetprov/prov/core/contract/hwid"
	"github.com/fleetprov/prov/core/policy"
	"github.com/fleetprov/prov/core/store"
	"github.com/fleetprov/prov/internal/untrusted"
	"github.com/fleetprov/prov/pki"
)

// BadInput is a field of a request that is wrong; its text is safe to
// send: it echoes only validated or quoted-and-truncated input.
type BadInput struct {
	Field, Reason string
	Err           error // the cause, if a lower layer refused
}

func (e *BadInput) Error() string { return e.Field + ": " + e.Reason }
func (e *BadInput) Unwrap() error { return e.Err }

// Changes is told about every change that gives devices a new
// generation (the change worker).
type Changes interface {
	DeviceChanged(serial string)
	GroupChanged(group string)
}

// Revoker revokes a certificate at the CA (step-ca, with core's
// revoke-only provisioner). A certificate the CA already holds as revoked
// is an error that is stepca.ErrAlreadyRevoked: done too.
type Revoker interface {
	Revoke(ctx context.Context, certSerial, reason string) error
}

// Sessions closes what a device has open at core's embedded broker.
type Sessions interface {
	CloseDevice(serial string)
}

// Options are the registry's optional parts.
type Options struct {
	// DefaultGroup is the group of registrations that name none
	// ("default" if empty).
	DefaultGroup string
	// Revoker, if set, revokes a revoked device's certificates at the CA
	// (RunCARevocations); without it they stay queued.
	Revoker Revoker
	// Sessions, if set, is told to close a device's sessions when it is
	// revoked (the embedded broker).
	Sessions Sessions
	// CARetry is the first pause after a failed revocation at the CA;
	// DefaultCARetry if zero.
	CARetry time.Duration
	// RolloutTick is how often RunRollouts looks at running rollouts
	// unwoken; DefaultRolloutTick if zero.
	RolloutTick time.Duration
	// Metrics, if set, registers the registry's metrics.
	Metrics prometheus.Registerer
	Log     *slog.Logger
}

// Registry is core's registry behind its API.
type Registry struct {
	store   store.Store
	policy  *policy.Policy
	bundles *bundlecache.Cache
	changes Changes
	o       Options
	log     *slog.Logger

	registrations *prometheus.CounterVec
	collisions    prometheus.Counter
	keys          *keyMetrics
	ca            *caQueue
	rollouts      *rolloutRunner
}

// New makes a registry. changes may be nil (nothing is told).
func New(st store.Store, pol *policy.Policy, bundles *bundlecache.Cache, changes Changes, o Options) *Registry {
	if o.DefaultGroup == "" {
		o.DefaultGroup = "default"
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.CARetry <= 0 {
		o.CARetry = DefaultCARetry
	}
	if changes == nil {
		changes = nobody{}
	}
	r := &Registry{store: st, policy: pol, bundles: bundles, changes: changes, o: o, log: o.Log.With("component", "registry"),
		registrations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "prov_core_registrations_total", Help: "Device registrations by result (created, existing, collision, invalid).",
		}, []string{"result"}),
		collisions: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "prov_core_serial_collisions_total", Help: "Hardware IDs refused because another one already has their serial.",
		}),
	}
	r.keys = newKeyMetrics()
	r.ca = newCAQueue()
	r.rollouts = newRolloutRunner()
	if o.Metrics != nil {
		o.Metrics.MustRegister(r.registrations, r.collisions)
		o.Metrics.MustRegister(r.keys.collectors()...)
		o.Metrics.MustRegister(r.ca.collectors()...)
		o.Metrics.MustRegister(r.rollouts.steps, newFleetCollector(r))
	}
	return r
}

type nobody struct{}

func (nobody) DeviceChanged(string) {}
func (nobody) GroupChanged(string)  {}

// Register registers the device a proxy vouched for, or returns its
// record if the hardware ID is known (created false): registration is
// idempotent, so a proxy can retry after any failure.
func (r *Registry) Register(req coreapi.RegisterRequest, by pki.Identity) (*store.View, bool, error) {
	v, created, err := r.register(req, by)
	switch {
	case err == nil && created:
		r.registrations.WithLabelValues("created").Inc()
		r.log.Info("device registered", "serial", v.Serial, "board", v.Board, "group", v.Group, "proxy", by.String())
		r.changes.DeviceChanged(v.Serial)
	case err == nil:
		r.registrations.WithLabelValues("existing").Inc()
	case errors.Is(err, store.ErrCollision):
		r.registrations.WithLabelValues("collision").Inc()
		r.collisions.Inc()
	case isInput(err):
		r.registrations.WithLabelValues("invalid").Inc()
	}
	return v, created, err
}

func (r *Registry) register(req coreapi.RegisterRequest, by pki.Identity) (*store.View, bool, error) {
	if req.Group == "" {
		req.Group = r.o.DefaultGroup
	}
	if !r.policy.HasGroup(req.Group) {
		return nil, false, &BadInput{Field: "group", Reason: fmt.Sprintf("%s is not a configured group", untrusted.Quote(req.Group))}
	}
	id, err := hwid.Parse(req.Board, req.HardwareID)
	if err != nil {
		field := "hardwareId"
		if errors.Is(err, hwid.ErrBadBoard) {
			field = "board"
		}
		return nil, false, &BadInput{Field: field, Reason: err.Error(), Err: err}
	}
	imm, err := r.policy.Immutable(req.Group, id.Serial(), id.Board)
	if err != nil {
		return nil, false, fmt.Errorf("the data policy of group %s cannot make device %s's data: %w", req.Group, id.Serial(), err)
	}
	v, created, err := r.store.Register(store.Registration{ID: id, Group: req.Group, Immutable: imm, Actor: by.String()})
	if errors.Is(err, store.ErrCollision) {
		r.log.Warn("serial collision: hardware ID refused", "board", id.Board, "serial", id.Serial(), "proxy", by.String())
	}
	return v, created, err
}

func isInput(err error) bool {
	var bad *BadInput
	return errors.As(err, &bad)
}

// RecordIssued records a certificate a proxy had issued for a device at
// enrollment: what the re-enrollment policy decides on, the key core
// accepts from the device, and what a revoke revokes at the CA. For a
// revoked device it is queued for revocation at once and refused
// (store.ErrRevoked).
func (r *Registry) RecordIssued(serial string, ic coreapi.IssuedCertificate, by pki.Identity) (*store.View, error) {
	if n, ok := new(big.Int).SetString(ic.Serial, 10); !ok || n.Sign() <= 0 {
		return nil, &BadInput{Field: "serial", Reason: "want the certificate's serial number in decimal"}
	}
	if _, err := hex.DecodeString(ic.KeySHA256); err != nil || len(ic.KeySHA256) != 64 {
		return nil, &BadInput{Field: "keySha256", Reason: "want 64 hex digits"}
	}
	if _, err := hex.DecodeString(ic.EKSHA256); err != nil || (ic.EKSHA256 != "" && len(ic.EKSHA256) != 64) || ic.EKSHA256 != strings.ToLower(ic.EKSHA256) {
		return nil, &BadInput{Field: "ekSha256", Reason: "want 64 lowercase hex digits, or none for a software key"}
	}
	v, err := r.store.RecordIssued(serial, store.Issued{Serial: ic.Serial, KeySHA256: ic.KeySHA256, NotBefore: ic.NotBefore.UTC(),
		NotAfter: ic.NotAfter.UTC(), IssuedBy: by.String(), EKSHA256: ic.EKSHA256})
	if errors.Is(err, store.ErrRevoked) {
		r.log.Warn("a certificate issued for a revoked device: recorded and queued for revocation at the CA", "serial", serial,
			"cert_serial", ic.Serial, "proxy", by.String())
		r.ca.wake()
	}
	return v, err
}

// Device returns a device with its group.
func (r *Registry) Device(serial string) (*store.View, error) { return r.store.Device(serial) }

// List returns up to limit devices after the cursor, and the next cursor.
func (r *Registry) List(after string, limit int) ([]store.View, string, error) {
	return r.store.List(after, limit)
}

// SeenCertificate remembers the certificate a device called with: a write
// only the first time it is seen. Failing to record it does not fail the
// request; it is logged. On a revoked device the store queues it for
// revocation at the CA, and the queue's worker is woken.
func (r *Registry) SeenCertificate(v *store.View, leaf *x509.Certificate) {
	sum := sha256.Sum256(leaf.Raw)
	fp := hex.EncodeToString(sum[:])
	if v.HasCertificate(fp) {
		return
	}
	c := store.Certificate{Fingerprint: fp, Serial: leaf.SerialNumber.String(), NotAfter: leaf.NotAfter.UTC()}
	if err := r.store.SeenCertificate(v.Serial, c); err != nil {
		r.log.Warn("cannot record the device certificate", "serial", v.Serial, "err", err)
	}
	if v.Status == store.Revoked {
		r.ca.wake()
	}
}

// Bundle is the signed bundle of a device's current generation, built and
// signed if the cache does not hold it.
func (r *Registry) Bundle(v *store.View) (*bundlecache.Bundle, error) {
	b, err := r.bundles.Get(policy.Record(v))
	if err != nil {
		return nil, fmt.Errorf("bundle of %s generation %d: %w", v.Serial, v.Generation(), err)
	}
	return b, nil
}

// SetDeviceData changes a device's own data if it is still at generation
// ifGeneration; the result must still make a valid image.
func (r *Registry) SetDeviceData(serial string, ifGeneration uint64, c coreapi.DataChange, by pki.Identity) (*store.View, error) {
	v, err := r.store.SetDeviceData(serial, ifGeneration, store.Change{Set: c.Set, Unset: c.Unset}, by.String(), func(v *store.View) error {
		return r.policy.CheckData(v.EffectiveData())
	})
	if err != nil {
		return nil, err
	}
	r.changes.DeviceChanged(serial)
	return v, nil
}

// Reprovision moves a device to a new generation with the same data.
func (r *Registry) Reprovision(serial string, by pki.Identity) (*store.View, error) {
	v, err := r.store.Reprovision(serial, by.String())
	if err != nil {
		return nil, err
	}
	r.changes.DeviceChanged(serial)
	return v, nil
}

// Revoke refuses a device from now on: core's API and broker refuse it at
// once, its open broker sessions are closed, and every certificate ever
// issued for it or seen is queued for revocation at the CA in the same
// write as its status. The CA is tried at once (bounded by
// firstAttemptTimeout); what it does not confirm stays queued, retried by
// RunCARevocations, and shows in the admin's view (PendingCARevocations).
func (r *Registry) Revoke(ctx context.Context, serial, reason string, by pki.Identity) (*store.View, error) {
	v, err := r.store.Revoke(serial, by.String(), reason)
	if err != nil {
		return nil, err
	}
	r.log.Info("device revoked", "serial", serial, "by", by.String(), "reason", reason)
	if r.o.Sessions != nil {
		r.o.Sessions.CloseDevice(serial)
	}
	r.revokeAtCANow(ctx, serial)
	return v, nil
}

// DeviceAudit is a device's audit trail after sequence number after.
func (r *Registry) DeviceAudit(serial string, after uint64) ([]store.Event, error) {
	return r.store.Audit("device/"+serial, after, maxAudit)
}

// GroupAudit is a group's audit trail after sequence number after.
func (r *Registry) GroupAudit(name string, after uint64) ([]store.Event, error) {
	if !r.policy.HasGroup(name) {
		return nil, ErrNoSuchGroup
	}
	return r.store.Audit("group/"+name, after, maxAudit)
}

// maxAudit bounds one page of an audit trail.
const maxAudit = 1000

// Group returns a configured group.
func (r *Registry) Group(name string) (*store.Group, error) {
	if !r.policy.HasGroup(name) {
		return nil, ErrNoSuchGroup
	}
	return r.store.Group(name)
}

// SetGroupData changes a group's data if it is still at version
// ifVersion; every member moves to a new generation.
func (r *Registry) SetGroupData(name string, ifVersion uint64, c coreapi.DataChange, by pki.Identity) (*store.Group, error) {
	if !r.policy.HasGroup(name) {
		return nil, ErrNoSuchGroup
	}
	g, err := r.store.SetGroupData(name, ifVersion, store.Change{Set: c.Set, Unset: c.Unset}, by.String(), func(g *store.Group) error {
		return r.policy.CheckData(g.Data)
	})
	if err != nil {
		return nil, err
	}
	r.changes.GroupChanged(name)
	return g, nil
}

// GroupMembers calls fn with each member's serial.
func (r *Registry) GroupMembers(group string, fn func(serial string) error) error {
	return r.store.GroupMembers(group, fn)
}

// pingTimeout bounds Ready's check of a store's database: /readyz answers
// a load balancer's health check well within its own timeout.
const pingTimeout = 2 * time.Second

// Ready says whether the store can be read: its database, if it has one,
// answers (ErrDatabaseAway if not), and a record reads.
func (r *Registry) Ready() error {
	if p, ok := r.store.(store.Pinger); ok {
		ctx, cancel := context.WithTimeout(context.Background(), pingTimeout)
		defer cancel()
		if err := p.Ping(ctx); err != nil {
			return fmt.Errorf("%w: %w", ErrDatabaseAway, err)
		}
	}
	if _, err := r.store.Group(r.o.DefaultGroup); err != nil && !errors.Is(err, store.ErrNotFound) {
		return fmt.Errorf("read the registry: %w", err)
	}
	return nil
}

// Backup writes a consistent copy of the store to w; start is called with
// what it holds before the first byte.
func (r *Registry) Backup(w io.Writer, start func(store.BackupInfo)) error {
	b, ok := r.store.(store.Backuper)
	if !ok {
		return store.ErrNoBackup
	}
	return b.Backup(w, start)
}

// HasGroup says whether the configuration names the group.
func (r *Registry) HasGroup(name string) bool { return r.policy.HasGroup(name) }
