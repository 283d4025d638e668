// Package enroll is the enrollment of one new device by the factory proxy:
// validate what it sent, vouch for it, register it with core, mint a
// one-time token bound to its serial and its CSR, have step-ca sign,
// record the certificate at core, fetch and check the first bundle, and
// answer. Every attempt, whatever its end, goes into the factory record
// before the device hears the answer.
//
// A retry after a failure at any step completes with a fresh token: core's
// registration is idempotent, and the re-enrollment policy treats the same
// key within the retry window as the same enrollment. A device never gets
// two identities: its identity is its serial, which only core's rule sets.
package enroll

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"sync"
	"time"

	"github.com/fleetprov/prov/core/contract/coreapi"
	"github.com/fleetprov/prov/core/contract/hwid"
	"github.com/fleetprov/prov/core/contract/imagespec"
	"github.com/fleetprov/prov/internal/untrusted"
	"github.com/fleetprov/prov/pki"
	"github.com/fleetprov/prov/pki/signedimage"
	"github.com/fleetprov/prov/pki/stepca"
	"github.com/fleetprov/prov/pki/token"
	"github.com/fleetprov/prov/proxy/attest"
	"github.com/fleetprov/prov/proxy/auditlog"
	"github.com/fleetprov/prov/proxy/contract/enrollapi"
	"github.com/fleetprov/prov/proxy/vouch"
)

// Core is what the proxy needs of core (coreapi.Client).
type Core interface {
	Register(ctx context.Context, r coreapi.RegisterRequest) (*coreapi.Device, bool, error)
	RecordIssued(ctx context.Context, serial string, c coreapi.IssuedCertificate) (*coreapi.Device, error)
	Bundle(ctx context.Context, serial, etag string) (io.ReadCloser, string, error)
	Admit(ctx context.Context, r coreapi.AdmissionRequest) (*coreapi.Admission, error)
	EndAdmission(ctx context.Context, serial string, e coreapi.AdmissionEnd) error
}

// CA is what the proxy needs of step-ca (pki/stepca.Client). Revoke's
// error is stepca.ErrAlreadyRevoked for a certificate already revoked.
type CA interface {
	SignFor(ctx context.Context, csr *x509.CertificateRequest, ott string, lifetime time.Duration) ([]*x509.Certificate, error)
	Revoke(ctx context.Context, serial, ott, reason string) error
	SignAudience() string
	RevokeAudience() string
}

// Attester is what the enrollment needs of the TPM attestation verifier
// (attest.Verifier); board is the board's canonical hardware ID key.
type Attester interface {
	Challenge(req enrollapi.ChallengeRequest, board string) (*enrollapi.ChallengeResponse, error)
	Verify(att *enrollapi.Attestation, board string, csr *x509.CertificateRequest, hardwareID string) (*attest.Result, error)
}

// Field is what a device is told about the field.
type Field struct {
	CoreURL, CAURL, MQTTURL string
}

// BadRequest is input the device got wrong.
type BadRequest struct{ Reason string }

func (e *BadRequest) Error() string { return e.Reason }

// Upstream is a failure of core or step-ca; the device may retry.
type Upstream struct {
	Step string
	Err  error
}

func (e *Upstream) Error() string { return e.Step + ": " + e.Err.Error() }
func (e *Upstream) Unwrap() error { return e.Err }

// Enroller enrolls devices.
type Enroller struct {
	name     string // this proxy's identity
	core     Core
	ca       CA
	prov     *token.Provisioner
	policy   *vouch.Policy
	attester Attester // nil: no manufacturer roots, no attested enrollment
	record   *auditlog.Log
	roots    *pki.TrustBundle
	rootPEM  string
	field    Field
	log      *slog.Logger
	now      func() time.Time
	observe  func(result string, d time.Duration)
	certLife time.Duration
	recorded func(auditlog.Record)
	lease    time.Duration
	endWait  time.Duration
	locksMu  sync.Mutex
	locks    map[string]*serialLock
}

type serialLock struct {
	mu   sync.Mutex
	refs int
}

// Options are the enroller's dependencies.
type Options struct {
	Name   string // the proxy's identity, for records
	Core   Core
	CA     CA
	Prov   *token.Provisioner
	Policy *vouch.Policy
	// Attester verifies TPM attestations; nil if the proxy has no
	// manufacturer roots (then a board that must attest is refused).
	Attester Attester
	Record   *auditlog.Log
	Roots    *pki.TrustBundle
	RootPEM  []byte
	Field    Field
	Log      *slog.Logger
	Now      func() time.Time
	Observe  func(result string, d time.Duration)
	// Recorded, if set, is given every attempt once it is in the factory
	// record (the status page follows it).
	Recorded func(auditlog.Record)
	CertLife time.Duration // zero: the provisioner's default
	// Lease is how long core holds a board's place without an outcome
	// (DefaultLease if zero): longer than an enrollment's upstream calls
	// take, short enough that a proxy that died frees its places soon.
	Lease time.Duration
	// EndTimeout bounds telling core an enrollment's outcome (the
	// enrollment's own context may have ended); 30 s if zero.
	EndTimeout time.Duration
}

// DefaultLease is Options.Lease's default.
const DefaultLease = 5 * time.Minute

// New makes an enroller.
func New(o Options) *Enroller {
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Observe == nil {
		o.Observe = func(string, time.Duration) {}
	}
	if o.Recorded == nil {
		o.Recorded = func(auditlog.Record) {}
	}
	if o.Lease <= 0 {
		o.Lease = DefaultLease
	}
	if o.EndTimeout <= 0 {
		o.EndTimeout = 30 * time.Second
	}
	return &Enroller{name: o.Name, core: o.Core, ca: o.CA, prov: o.Prov, policy: o.Policy, attester: o.Attester, record: o.Record, roots: o.Roots,
		rootPEM: string(o.RootPEM), field: o.Field, log: o.Log.With("component", "enroll"), now: o.Now, observe: o.Observe,
		certLife: o.CertLife, recorded: o.Recorded, lease: o.Lease, endWait: o.EndTimeout, locks: map[string]*serialLock{}}
}

// attempt is what is known of an attempt, for its record.
type attempt struct {
	rec   auditlog.Record
	start time.Time
	mark  time.Time // the end of the last step timed
}

// step records the time since the last step (or the start) as step's:
// the console shows where an attempt spent its time.
func (a *attempt) step(name string, now time.Time) {
	from := a.mark
	if from.IsZero() {
		from = a.start
	}
	a.rec.Steps = append(a.rec.Steps, auditlog.Step{Name: name, US: now.Sub(from).Microseconds()})
	a.mark = now
}

// Enroll enrolls the device that sent req from source.
func (e *Enroller) Enroll(ctx context.Context, req enrollapi.EnrollRequest, source netip.Addr) (*enrollapi.EnrollResponse, error) {
	a := &attempt{start: e.now(), rec: auditlog.Record{Proxy: e.name, Source: source.String(), Board: untrusted.Short(req.Board), HardwareID: untrusted.Short(req.HardwareID)}}
	resp, err := e.enroll(ctx, req, source, a)
	return e.finish(a, resp, err)
}

// Reject records and refuses a request that could not be read, after the
// network and rate rules (which answer first, as for any request).
func (e *Enroller) Reject(source netip.Addr, reason string) error {
	a := &attempt{start: e.now(), rec: auditlog.Record{Proxy: e.name, Source: source.String()}}
	err := e.policy.Allow(source, a.start)
	if err == nil {
		err = e.policy.CheckSource(source)
	}
	if err == nil {
		err = &BadRequest{Reason: reason}
	}
	_, err = e.finish(a, nil, err)
	return err
}

func (e *Enroller) enroll(ctx context.Context, req enrollapi.EnrollRequest, source netip.Addr, a *attempt) (*enrollapi.EnrollResponse, error) {
	now := e.now()
	in, err := e.check(req, source, now, a)
	if err != nil {
		return nil, err
	}
	adm, err := e.policy.Admit(in.id, now)
	if err != nil {
		return nil, err
	}
	if adm.Batch != nil {
		a.rec.Batch = adm.Batch.Name
	}
	// Before core is asked: a board that fails its attestation takes no
	// place in its batch.
	last := "check" // the step timed when the serial's lock is held
	if req.Attestation != nil {
		a.step("check", e.now())
		last = "attest"
	}
	if err := e.attest(req, in, adm); err != nil {
		return nil, err
	}
	a.rec.EK = in.ek
	unlock := e.lock(in.serial)
	defer unlock()
	a.step(last, e.now())

	admitted, err := e.admit(ctx, in, adm)
	a.step("admit", e.now())
	if err != nil {
		return nil, err
	}
	enrolled := false
	defer func() { e.endAdmission(in, a.rec.Batch, enrolled) }()
	dev, err := e.register(ctx, in, adm.Group())
	a.step("register", e.now())
	if err != nil {
		return nil, err
	}
	if len(admitted.Revoke) > 0 {
		err := e.revokeOld(ctx, in, admitted.Revoke)
		a.step("revoke", e.now())
		if err != nil {
			return nil, err
		}
	}
	// The first bundle does not depend on the certificate: fetch it while
	// step-ca signs. It is dropped if the enrollment fails.
	bctx, cancel := context.WithCancel(ctx)
	defer cancel()
	fetched := make(chan bundleResult, 1)
	go func() { fetched <- e.firstBundle(bctx, in.serial) }()

	chain, err := e.issue(ctx, in)
	a.step("sign", e.now())
	if err != nil {
		return nil, err
	}
	a.rec.CertSerial = chain[0].SerialNumber.String()
	first := <-fetched
	a.step("bundle", e.now())
	if first.err != nil {
		return nil, first.err
	}
	enrolled = true
	return e.answer(in.serial, dev.Topic, chain, first), nil
}

// request is an enrollment request that passed the checks.
type request struct {
	id     hwid.ID
	serial string
	csr    *x509.CertificateRequest
	keySHA string // of the CSR's public key
	// ek is the endorsement key hash (enrollapi.EKHash) of the TPM the
	// CSR's key is proven resident in, "" for a key not attested. The
	// certificate's attestation extension and core's record of the
	// device take it from here.
	ek string
}

// attest verifies the board's TPM attestation, if it sent one or must:
// its batch requires it, or its manifest lists its TPM's endorsement key
// (which must then be the attested one).
func (e *Enroller) attest(req enrollapi.EnrollRequest, in *request, adm *vouch.Admission) error {
	if req.Attestation == nil {
		if adm.AttestationRequired() {
			return attestRefusal(&attest.Error{Err: attest.ErrMissing, Reason: "this board's batch requires a TPM-attested key (enroll with --key tpm)"})
		}
		return nil
	}
	if e.attester == nil {
		return attestRefusal(&attest.Error{Err: attest.ErrMissing, Reason: "this proxy has no manufacturer roots (attestation.roots) to verify it"})
	}
	res, err := e.attester.Verify(req.Attestation, in.id.Key(), in.csr, req.HardwareID)
	if err != nil {
		return attestRefusal(err)
	}
	if adm.EK != "" && adm.EK != res.EKHash {
		return attestRefusal(&attest.Error{Err: attest.ErrEKNotListed, Reason: fmt.Sprintf("the manifest lists %s, the board's TPM is %s", adm.EK, res.EKHash)})
	}
	in.ek = res.EKHash
	return nil
}

// attestRefusal is an attestation's refusal as the policy's: rule
// attestation, or rate when too many challenges are outstanding.
func attestRefusal(err error) error {
	var ae *attest.Error
	if !errors.As(err, &ae) {
		return err
	}
	if errors.Is(err, attest.ErrBusy) {
		return &vouch.Refusal{Rule: enrollapi.RuleRate, Reason: ae.Error(), RetryAfter: 5, Err: ae}
	}
	return &vouch.Refusal{Rule: enrollapi.RuleAttestation, Reason: ae.Error(), Err: ae}
}

// Challenge answers a board's request for an attestation challenge, after
// the network and rate rules (as for an enrollment), the serial rule and
// the manifest and window rules. A refusal is recorded in the factory
// record like an enrollment's; a challenge given is not (the enrollment
// that answers it is).
func (e *Enroller) Challenge(req enrollapi.ChallengeRequest, source netip.Addr) (*enrollapi.ChallengeResponse, error) {
	a := &attempt{start: e.now(), rec: auditlog.Record{Proxy: e.name, Source: source.String(), Board: untrusted.Short(req.Board), HardwareID: untrusted.Short(req.HardwareID)}}
	resp, err := e.challenge(req, source, a)
	if err != nil {
		_, err = e.finish(a, nil, err)
		return nil, err
	}
	return resp, nil
}

func (e *Enroller) challenge(req enrollapi.ChallengeRequest, source netip.Addr, a *attempt) (*enrollapi.ChallengeResponse, error) {
	now := e.now()
	id, err := e.screen(req.Board, req.HardwareID, source, now, a)
	if err != nil {
		return nil, err
	}
	a.rec.Serial = id.Serial()
	adm, err := e.policy.Admit(id, now)
	if err != nil {
		return nil, err
	}
	if adm.Batch != nil {
		a.rec.Batch = adm.Batch.Name
	}
	if e.attester == nil {
		return nil, attestRefusal(&attest.Error{Err: attest.ErrMissing, Reason: "this proxy has no manufacturer roots (attestation.roots) to verify it"})
	}
	resp, err := e.attester.Challenge(req, id.Key())
	if err != nil {
		return nil, attestRefusal(err)
	}
	return resp, nil
}

// check applies the network and rate rules first, as for any request,
// then validates the hardware ID by the serial rule and the CSR.
func (e *Enroller) check(req enrollapi.EnrollRequest, source netip.Addr, now time.Time, a *attempt) (*request, error) {
	id, err := e.screen(req.Board, req.HardwareID, source, now, a)
	if err != nil {
		return nil, err
	}
	csr, keySHA, err := checkCSR(req.CSR)
	if err != nil {
		return nil, err
	}
	a.rec.Serial = id.Serial()
	return &request{id: id, serial: id.Serial(), csr: csr, keySHA: keySHA}, nil
}

// screen applies the network and rate rules, then validates the hardware
// ID by the board's serial rule.
func (e *Enroller) screen(board, hardwareID string, source netip.Addr, now time.Time, a *attempt) (hwid.ID, error) {
	if err := e.policy.Allow(source, now); err != nil {
		return hwid.ID{}, err
	}
	if err := e.policy.CheckSource(source); err != nil {
		return hwid.ID{}, err
	}
	id, err := hwid.Parse(board, hardwareID)
	if err != nil {
		field := "hardwareId"
		if errors.Is(err, hwid.ErrBadBoard) {
			field = "board"
		}
		return hwid.ID{}, &BadRequest{Reason: field + ": " + err.Error()}
	}
	a.rec.Board, a.rec.HardwareID = id.Board, id.Canonical
	return id, nil
}

// register registers the device at core (idempotent) and checks core's
// answer: the same serial, and a device core has not revoked.
func (e *Enroller) register(ctx context.Context, in *request, group string) (*coreapi.Device, error) {
	dev, _, err := e.core.Register(ctx, coreapi.RegisterRequest{Board: in.id.Board, HardwareID: in.id.Canonical, Group: group})
	if err != nil {
		return nil, &Upstream{Step: "register with core", Err: err}
	}
	if dev.Serial != in.serial {
		return nil, &Upstream{Step: "register with core", Err: fmt.Errorf("core gave serial %s, the rule gives %s: core and proxy disagree on the serial rule", dev.Serial, in.serial)}
	}
	if dev.Status != coreapi.StatusActive {
		return nil, &vouch.Refusal{Rule: enrollapi.RuleReenrollment, Reason: "core has this device " + string(dev.Status)}
	}
	return dev, nil
}

// admit asks core to admit the board: its batch's quota and the
// re-enrollment policy are decided there, for every proxy of the line at
// once; a refusal is the policy's, naming the rule.
func (e *Enroller) admit(ctx context.Context, in *request, adm *vouch.Admission) (*coreapi.Admission, error) {
	req := coreapi.AdmissionRequest{Board: in.id.Board, HardwareID: in.id.Canonical, KeySHA256: in.keySHA,
		Policy: e.policy.Reenrollment(), RetryWindowSeconds: int(e.policy.RetryWindow() / time.Second), LeaseSeconds: int(e.lease / time.Second)}
	if adm.Batch != nil {
		req.Batch, req.Quota = adm.Batch.Name, adm.Batch.Quota
	}
	got, err := e.core.Admit(ctx, req)
	if refusal := vouch.CoreRefusal(err); refusal != nil {
		return nil, refusal
	}
	if err != nil {
		return nil, &Upstream{Step: "admission at core", Err: err}
	}
	if got.Serial != in.serial {
		return nil, &Upstream{Step: "admission at core", Err: fmt.Errorf("core admitted serial %s, the rule gives %s: core and proxy disagree on the serial rule", got.Serial, in.serial)}
	}
	return got, nil
}

// endAdmission tells core how the admitted enrollment ended: enrolled
// keeps the board's place in its batch, anything else gives it back. If
// core cannot be told, the place is given back when its lease ends (a
// board enrolled is still counted: core keeps its certificate).
func (e *Enroller) endAdmission(in *request, batch string, enrolled bool) {
	outcome := coreapi.OutcomeReleased
	if enrolled {
		outcome = coreapi.OutcomeEnrolled
	}
	ctx, cancel := context.WithTimeout(context.Background(), e.endWait)
	defer cancel()
	if err := e.core.EndAdmission(ctx, in.serial, coreapi.AdmissionEnd{KeySHA256: in.keySHA, Batch: batch, Outcome: outcome}); err != nil {
		e.log.Warn("could not tell core the admission's outcome; its lease will end it", "serial", in.serial, "outcome", outcome, "err", err)
	}
}

// revokeOld revokes at step-ca the certificates core's admission listed
// (policy allow; one already revoked is fine: a retry).
func (e *Enroller) revokeOld(ctx context.Context, in *request, revoke []string) error {
	for _, old := range revoke {
		tok, err := e.prov.RevokeToken(e.ca.RevokeAudience(), old, e.now())
		if err != nil {
			return &Upstream{Step: "revoke the old certificate", Err: err}
		}
		if err := e.ca.Revoke(ctx, old, tok, "re-enrolled by "+e.name); err != nil && !errors.Is(err, stepca.ErrAlreadyRevoked) {
			return &Upstream{Step: "revoke the old certificate", Err: err}
		}
		e.log.Info("re-enrollment: old certificate revoked", "serial", in.serial, "cert_serial", old)
	}
	return nil
}

// issue has step-ca sign the CSR with a one-time token bound to the serial
// and the CSR's key, checks that the certificate is exactly the device's
// identity for that key, and records it at core.
func (e *Enroller) issue(ctx context.Context, in *request) ([]*x509.Certificate, error) {
	identity, err := pki.DeviceIdentity(e.roots.TrustDomain(), in.serial)
	if err != nil {
		return nil, err
	}
	tok, err := e.prov.SignToken(token.SignRequest{Audience: e.ca.SignAudience(), Subject: in.serial, SANs: []string{identity.String()}, CSR: in.csr,
		EKSHA256: in.ek}, e.now())
	if err != nil {
		return nil, err
	}
	chain, err := e.ca.SignFor(ctx, in.csr, tok, e.certLife)
	if err != nil {
		return nil, &Upstream{Step: "sign at step-ca", Err: err}
	}
	got, err := e.roots.Verify(chain, pki.VerifyOptions{KeyUsage: x509.ExtKeyUsageClientAuth, Roles: []pki.Role{pki.RoleDevice}})
	if err != nil || got != identity || keyDigest(chain[0].PublicKey) != in.keySHA {
		return nil, &Upstream{Step: "sign at step-ca", Err: fmt.Errorf("the certificate is not %s for the CSR's key (%w)", identity, err)}
	}
	leaf := chain[0]
	// The certificate must say of its key what the proxy found: a CA
	// whose template dropped (or added) the TPM key policy would hand the
	// board a certificate that lies about it.
	ka, err := pki.KeyAttestationOf(leaf)
	if err != nil {
		return nil, &Upstream{Step: "sign at step-ca", Err: fmt.Errorf("the certificate's TPM key policy: %w", err)}
	}
	if ka.EKSHA256 != in.ek {
		return nil, &Upstream{Step: "sign at step-ca", Err: fmt.Errorf("the certificate's TPM key policy names endorsement key %q, the attestation %q",
			ka.EKSHA256, in.ek)}
	}
	if _, err := e.core.RecordIssued(ctx, in.serial, coreapi.IssuedCertificate{Serial: leaf.SerialNumber.String(), KeySHA256: in.keySHA,
		NotBefore: leaf.NotBefore, NotAfter: leaf.NotAfter, EKSHA256: in.ek}); err != nil {
		return nil, &Upstream{Step: "record the certificate at core", Err: err}
	}
	return chain, nil
}

// answer is everything the device needs in the field.
func (e *Enroller) answer(serial, topic string, chain []*x509.Certificate, first bundleResult) *enrollapi.EnrollResponse {
	var certPEM bytes.Buffer
	for _, c := range chain {
		_ = pem.Encode(&certPEM, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
	}
	return &enrollapi.EnrollResponse{
		Serial: serial, Certificate: certPEM.String(), Root: e.rootPEM,
		CoreURL: e.field.CoreURL, CAURL: e.field.CAURL, MQTTURL: e.field.MQTTURL, MQTTTopic: topic,
		Bundle: base64.StdEncoding.EncodeToString(first.data), Generation: first.generation,
	}
}

// bundleResult is the device's first signed bundle, checked as the device
// will check it.
type bundleResult struct {
	data       []byte
	generation uint64
	err        error
}

// firstBundle fetches the device's bundle and verifies it.
func (e *Enroller) firstBundle(ctx context.Context, serial string) bundleResult {
	fail := func(err error) bundleResult {
		return bundleResult{err: &Upstream{Step: "fetch the first bundle", Err: err}}
	}
	body, _, err := e.core.Bundle(ctx, serial, "")
	if err != nil {
		return fail(err)
	}
	defer func() { _ = body.Close() }()
	data, err := io.ReadAll(io.LimitReader(body, 12+signedimage.MaxStatementSize+imagespec.MaxImageSize+1))
	if err != nil {
		return fail(err)
	}
	v, _, err := signedimage.VerifyBytes(data, signedimage.VerifyOptions{Roots: e.roots, Serial: serial, Now: e.now(), MaxImageSize: imagespec.MaxImageSize})
	if err != nil {
		return fail(fmt.Errorf("core's bundle does not verify: %w", err))
	}
	return bundleResult{data: data, generation: v.Generation}
}

// checkCSR parses one PEM CSR, checks its self-signature and key type, and
// refuses any name in it: the proxy, not the device, decides the identity
// (and step-ca would refuse names the token does not carry).
func checkCSR(s string) (*x509.CertificateRequest, string, error) {
	block, rest := pem.Decode([]byte(s))
	if block == nil || block.Type != "CERTIFICATE REQUEST" || len(bytes.TrimSpace(rest)) > 0 {
		return nil, "", &BadRequest{Reason: "csr: want exactly one PEM CERTIFICATE REQUEST"}
	}
	csr, err := x509.ParseCertificateRequest(block.Bytes)
	if err != nil {
		return nil, "", &BadRequest{Reason: "csr: " + err.Error()}
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, "", &BadRequest{Reason: "csr: its signature does not verify: " + err.Error()}
	}
	switch k := csr.PublicKey.(type) {
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() && k.Curve != elliptic.P384() {
			return nil, "", &BadRequest{Reason: "csr: ECDSA keys must be P-256 or P-384"}
		}
	case ed25519.PublicKey:
	default:
		return nil, "", &BadRequest{Reason: fmt.Sprintf("csr: a %T key; want ECDSA P-256/P-384 or Ed25519", csr.PublicKey)}
	}
	if csr.Subject.String() != "" || len(csr.DNSNames)+len(csr.IPAddresses)+len(csr.EmailAddresses)+len(csr.URIs) > 0 {
		return nil, "", &BadRequest{Reason: "csr: it names a subject or SANs; leave them empty, the proxy decides the identity"}
	}
	return csr, keyDigest(csr.PublicKey), nil
}

// keyDigest is the SHA-256 of a public key's SubjectPublicKeyInfo, hex.
func keyDigest(pub any) string {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return ""
	}
	sum := sha256.Sum256(der)
	return hex.EncodeToString(sum[:])
}

// lock serialises enrollments of one serial in this proxy.
func (e *Enroller) lock(serial string) func() {
	e.locksMu.Lock()
	l, ok := e.locks[serial]
	if !ok {
		l = &serialLock{}
		e.locks[serial] = l
	}
	l.refs++
	e.locksMu.Unlock()
	l.mu.Lock()
	return func() {
		l.mu.Unlock()
		e.locksMu.Lock()
		if l.refs--; l.refs == 0 {
			delete(e.locks, serial)
		}
		e.locksMu.Unlock()
	}
}

// finish records the attempt, durably, before anyone hears its result; if
// the record cannot be written, the answer is an error.
func (e *Enroller) finish(a *attempt, resp *enrollapi.EnrollResponse, err error) (*enrollapi.EnrollResponse, error) {
	var refusal *vouch.Refusal
	var bad *BadRequest
	switch {
	case err == nil:
		a.rec.Result = auditlog.Enrolled
	case errors.As(err, &refusal):
		a.rec.Result, a.rec.Rule, a.rec.Reason = auditlog.Refused, string(refusal.Rule), err.Error()
	case errors.As(err, &bad):
		a.rec.Result, a.rec.Rule, a.rec.Reason = auditlog.Refused, auditlog.RuleBadRequest, err.Error()
	default:
		a.rec.Result, a.rec.Reason = auditlog.Failed, err.Error()
	}
	rec, werr := e.record.Append(a.rec)
	if werr != nil {
		e.log.Error("factory record write failed; the attempt is not answered", "err", werr)
		e.observe(auditlog.Failed, e.now().Sub(a.start))
		return nil, &Upstream{Step: "write the factory record", Err: werr}
	}
	e.recorded(rec)
	e.observe(rec.Result, e.now().Sub(a.start))
	attrs := []any{"result", rec.Result, "source", rec.Source, "board", rec.Board, "serial", rec.Serial, "seq", rec.Seq}
	switch rec.Result {
	case auditlog.Enrolled:
		e.log.Info("device enrolled", append(attrs, "cert_serial", rec.CertSerial, "batch", rec.Batch)...)
	case auditlog.Refused:
		e.log.Info("enrollment refused", append(attrs, "reason", rec.Reason)...)
	default:
		e.log.Warn("enrollment failed", append(attrs, "reason", rec.Reason)...)
	}
	return resp, err
}
