package store

import (
	"fmt"
	"slices"
	"time"

	"github.com/fleetprov/prov/core/contract/coreapi"
)

// Admissions: the shared decision of whether a proxy may enroll a board,
// so that several proxies working from one batch manifest (and several
// cores on one database) neither exceed the batch's quota nor enroll one
// serial with two keys at once. Each engine makes the decision in one
// write: bbolt in one write transaction, PostgreSQL in one transaction
// holding the batch's row and the serial's reservation. The rule itself is
// DecideAdmission, the same for both.

// AdmissionRequest is a proxy's request to enroll a board.
type AdmissionRequest struct {
	Serial    string
	KeySHA256 string // the key to be certified
	// Batch is "" for a proxy without batches: no quota applies.
	Batch  string
	Quota  int
	Policy coreapi.ReenrollmentPolicy
	// RetryWindow is how long after its certificate the same key may
	// finish an unfinished enrollment under policy deny.
	RetryWindow time.Duration
	// Lease is how long the place is held without an outcome.
	Lease time.Duration
	Proxy string // who asks, for a refusal's reason
}

// Reservation is a serial's place while it is being enrolled.
type Reservation struct {
	Batch     string    `json:"batch,omitempty"`
	KeySHA256 string    `json:"keySha256"`
	Proxy     string    `json:"proxy"`
	Holders   int       `json:"holders"` // attempts with this key under way (a retry shares the place)
	Expires   time.Time `json:"expires"`
}

// Live says whether the reservation still holds its place at now.
func (r *Reservation) Live(now time.Time) bool { return r != nil && now.Before(r.Expires) }

// Admitted is an admission: the reservation written, and the certificates
// to revoke (policy allow).
type Admitted struct {
	Reservation Reservation
	Revoke      []string
}

// Refusal is an admission refused by a rule: Rule is ErrQuota,
// ErrReenrollment or ErrAdmissionHeld (errors.Is matches it), Reason says
// why in words a proxy can pass on to the board's operator.
type Refusal struct {
	Rule   error
	Reason string
}

func (r *Refusal) Error() string { return r.Reason }
func (r *Refusal) Unwrap() error { return r.Rule }

func refuse(rule error, format string, args ...any) *Refusal {
	return &Refusal{Rule: rule, Reason: fmt.Sprintf(format, args...)}
}

// AdmissionState is what an admission is decided on, read in the
// transaction that then writes the reservation.
type AdmissionState struct {
	// Held is the serial's reservation, live or expired; nil if none.
	Held *Reservation
	// Member: the serial is counted in the request's batch already.
	Member bool
	// Taken is the batch's members plus the live reservations in the
	// batch of serials other than this one that are not members.
	Taken int
	// Issued are the certificates core recorded for the device (none if
	// it is not registered yet).
	Issued []Issued
}

// DecideAdmission is the rule: another key's live reservation of the
// serial refuses it (ErrAdmissionHeld); a serial neither counted in the
// batch nor holding a place in it needs a free place (ErrQuota); the
// re-enrollment policy decides on the certificates issued before
// (ErrReenrollment, or the ones to revoke). Admitted, the serial holds its
// place until now+Lease, shared with any attempt of the same key.
func DecideAdmission(r AdmissionRequest, st AdmissionState, now time.Time) (*Admitted, error) {
	held := st.Held
	if held.Live(now) && held.KeySHA256 != r.KeySHA256 {
		return nil, refuse(ErrAdmissionHeld, "device %s is being enrolled with another key by %s until %s",
			r.Serial, held.Proxy, held.Expires.UTC().Format(time.RFC3339))
	}
	holding := held.Live(now) && held.Batch == r.Batch
	if r.Batch != "" && !st.Member && !holding && st.Taken >= r.Quota {
		return nil, refuse(ErrQuota, "batch %s has used its quota of %d devices", r.Batch, r.Quota)
	}
	revoke, err := reenroll(r, st.Issued, now)
	if err != nil {
		return nil, err
	}
	res := Reservation{Batch: r.Batch, KeySHA256: r.KeySHA256, Proxy: r.Proxy, Holders: 1, Expires: now.Add(r.Lease)}
	if held.Live(now) {
		res.Holders = held.Holders + 1
		if held.Expires.After(res.Expires) {
			res.Expires = held.Expires
		}
	}
	return &Admitted{Reservation: res, Revoke: revoke}, nil
}

// reenroll applies the re-enrollment policy to the certificates issued
// before: the serials to revoke (allow), or a refusal.
func reenroll(r AdmissionRequest, issued []Issued, now time.Time) ([]string, error) {
	// Keys a re-enrollment replaced are not the device's any more: they
	// can neither come back (same-key-only) nor need revoking again.
	issued = slices.DeleteFunc(slices.Clone(issued), func(c Issued) bool { return c.Replaced != nil })
	if len(issued) == 0 {
		return nil, nil
	}
	sameKey, recent := false, false
	for _, c := range issued {
		if c.KeySHA256 == r.KeySHA256 {
			sameKey = true
			if now.Sub(c.NotBefore) <= r.RetryWindow+2*time.Minute { // NotBefore is backdated by step-ca
				recent = true
			}
		}
	}
	switch r.Policy {
	case coreapi.ReenrollAllow:
		var revoke []string
		for _, c := range issued {
			if c.KeySHA256 != r.KeySHA256 && c.NotAfter.After(now) {
				revoke = append(revoke, c.Serial)
			}
		}
		return revoke, nil
	case coreapi.ReenrollSameKeyOnly:
		if sameKey {
			return nil, nil
		}
		return nil, refuse(ErrReenrollment, "device %s is enrolled with another key; policy same-key-only", r.Serial)
	default:
		if sameKey && recent {
			return nil, nil // a retry of an unfinished enrollment
		}
		return nil, refuse(ErrReenrollment, "device %s is already enrolled; policy deny", r.Serial)
	}
}

// EndReservation is the reservation after one of its attempts ended: nil
// when none is left (the place is free, or counted for good).
func EndReservation(held *Reservation, keySHA256 string) (rest *Reservation, changed bool) {
	if held == nil || held.KeySHA256 != keySHA256 {
		return held, false // expired and taken over, or never held: nothing of ours to end
	}
	if held.Holders <= 1 {
		return nil, true
	}
	r := *held
	r.Holders--
	return &r, true
}
