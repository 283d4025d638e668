package registry

import (
	"encoding/hex"
	"errors"
	"fmt"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/fleetprov/prov/core/contract/coreapi"
	"github.com/fleetprov/prov/core/contract/hwid"
	"github.com/fleetprov/prov/core/store"
	"github.com/fleetprov/prov/internal/untrusted"
	"github.com/fleetprov/prov/pki"
)

// Admissions: a proxy asks before it enrolls a board, so that every proxy
// of a line, whichever core replica it reaches, shares one count of each
// batch's places and one decision on re-enrolling a serial (the store's
// DecideAdmission). The manifest and the policy stay the proxy's
// configuration; core keeps the counts and the reservations by batch
// name.

// maxBatchName bounds a batch's name.
const maxBatchName = 128

// maxRetryWindow bounds the retry window a proxy may send.
const maxRetryWindow = 7 * 24 * time.Hour

// AdmitEnrollment decides whether proxy by may enroll the board req names; admitted,
// the serial holds its place until the lease ends or EndEnrollment.
func (r *Registry) AdmitEnrollment(req coreapi.AdmissionRequest, by pki.Identity) (*coreapi.Admission, error) {
	id, err := hwid.Parse(req.Board, req.HardwareID)
	if err != nil {
		field := "hardwareId"
		if errors.Is(err, hwid.ErrBadBoard) {
			field = "board"
		}
		return nil, &BadInput{Field: field, Reason: err.Error(), Err: err}
	}
	if err := checkKeyDigest(req.KeySHA256); err != nil {
		return nil, err
	}
	if err := checkBatch(req.Batch); err != nil {
		return nil, err
	}
	switch {
	case req.Batch != "" && req.Quota < 1:
		return nil, &BadInput{Field: "quota", Reason: fmt.Sprintf("%d; a batch's quota is at least 1", req.Quota)}
	case req.Batch == "" && req.Quota != 0:
		return nil, &BadInput{Field: "quota", Reason: "a quota needs a batch to count in"}
	}
	switch req.Policy {
	case coreapi.ReenrollDeny, coreapi.ReenrollAllow, coreapi.ReenrollSameKeyOnly:
	default:
		return nil, &BadInput{Field: "policy", Reason: fmt.Sprintf("%s is not deny, allow or same-key-only", untrusted.Quote(string(req.Policy)))}
	}
	window := time.Duration(req.RetryWindowSeconds) * time.Second
	if req.RetryWindowSeconds < 0 || window > maxRetryWindow {
		return nil, &BadInput{Field: "retryWindowSeconds", Reason: fmt.Sprintf("%d; want 0 to %d", req.RetryWindowSeconds, int(maxRetryWindow/time.Second))}
	}
	if req.LeaseSeconds < 1 || req.LeaseSeconds > coreapi.MaxLeaseSeconds {
		return nil, &BadInput{Field: "leaseSeconds", Reason: fmt.Sprintf("%d; want 1 to %d", req.LeaseSeconds, coreapi.MaxLeaseSeconds)}
	}
	serial := id.Serial()
	got, err := r.store.Admit(store.AdmissionRequest{Serial: serial, KeySHA256: req.KeySHA256, Batch: req.Batch, Quota: req.Quota,
		Policy: req.Policy, RetryWindow: window, Lease: time.Duration(req.LeaseSeconds) * time.Second, Proxy: by.String()})
	if err != nil {
		if isRefusal(err) {
			r.log.Info("admission refused", "serial", serial, "batch", req.Batch, "proxy", by.String(), "reason", err.Error())
		}
		return nil, err
	}
	return &coreapi.Admission{Serial: serial, Batch: req.Batch, Revoke: got.Revoke, Expires: got.Reservation.Expires}, nil
}

// EndEnrollment records how proxy by's admitted enrollment of serial ended.
func (r *Registry) EndEnrollment(serial string, end coreapi.AdmissionEnd, by pki.Identity) error {
	if err := checkKeyDigest(end.KeySHA256); err != nil {
		return err
	}
	if err := checkBatch(end.Batch); err != nil {
		return err
	}
	switch end.Outcome {
	case coreapi.OutcomeEnrolled, coreapi.OutcomeReleased:
	default:
		return &BadInput{Field: "outcome", Reason: fmt.Sprintf("%s is not enrolled or released", untrusted.Quote(string(end.Outcome)))}
	}
	if err := r.store.EndAdmission(end.Batch, serial, end.KeySHA256, end.Outcome == coreapi.OutcomeEnrolled); err != nil {
		return err
	}
	r.log.Debug("admission ended", "serial", serial, "batch", end.Batch, "outcome", end.Outcome, "proxy", by.String())
	return nil
}

// isRefusal says whether err is one of the admission's rules.
func isRefusal(err error) bool {
	return errors.Is(err, store.ErrQuota) || errors.Is(err, store.ErrReenrollment) || errors.Is(err, store.ErrAdmissionHeld)
}

// checkKeyDigest wants the 64 lowercase hex digits coreapi.KeySHA256 makes.
func checkKeyDigest(s string) error {
	if b, err := hex.DecodeString(s); err != nil || len(b) != 32 || hex.EncodeToString(b) != s {
		return &BadInput{Field: "keySha256", Reason: fmt.Sprintf("%s; want the SHA-256 of the key, 64 lowercase hex digits", untrusted.Quote(s))}
	}
	return nil
}

// checkBatch wants a batch name a message may quote as it is: printable
// UTF-8, at most maxBatchName bytes ("" is no batch).
func checkBatch(name string) error {
	if len(name) > maxBatchName {
		return &BadInput{Field: "batch", Reason: fmt.Sprintf("%d bytes; at most %d", len(name), maxBatchName)}
	}
	if at := untrusted.BadChar(name, func(c rune) bool { return c != utf8.RuneError && unicode.IsPrint(c) }); at > 0 {
		return &BadInput{Field: "batch", Reason: fmt.Sprintf("%s: character %d is not printable", untrusted.Quote(name), at)}
	}
	return nil
}
