package coreapi

import (
	"context"
	"time"
)

// ReenrollmentPolicy is what a proxy's vouching.reenrollment says of a
// serial that already has certificates; core applies it at admission.
type ReenrollmentPolicy string

// Re-enrollment policies.
const (
	// ReenrollDeny refuses it, except a retry of an unfinished
	// enrollment: the same key within the retry window of its certificate.
	ReenrollDeny ReenrollmentPolicy = "deny"
	// ReenrollAllow admits any key; the answer lists the old certificates
	// to revoke.
	ReenrollAllow ReenrollmentPolicy = "allow"
	// ReenrollSameKeyOnly admits only a key the device had.
	ReenrollSameKeyOnly ReenrollmentPolicy = "same-key-only"
)

// AdmissionRequest asks core to admit a board for enrollment (proxy): in
// one decision in core's store, shared by every proxy and every core
// replica, its batch's quota (a place reserved for Lease), the
// re-enrollment policy against the certificates core recorded, and no
// other enrollment of the serial with another key in progress.
type AdmissionRequest struct {
	Board      string `json:"board"`
	HardwareID string `json:"hardwareId"`
	// KeySHA256 is the digest of the CSR's key (KeySHA256).
	KeySHA256 string `json:"keySha256"`
	// Batch names the batch whose manifest lists the board ("" for a
	// proxy without batches: no quota). Quota is its size, from the
	// proxy's configuration (each proxy has the same manifest).
	Batch string `json:"batch,omitempty"`
	Quota int    `json:"quota,omitempty"`
	// Policy and RetryWindowSeconds are the proxy's re-enrollment policy.
	Policy             ReenrollmentPolicy `json:"policy"`
	RetryWindowSeconds int                `json:"retryWindowSeconds"`
	// LeaseSeconds is how long the place is held without an outcome
	// (1 to MaxLeaseSeconds): a proxy that dies does not hold it for ever.
	LeaseSeconds int `json:"leaseSeconds"`
}

// MaxLeaseSeconds bounds an admission's lease.
const MaxLeaseSeconds = 3600

// Admission is core's yes to an AdmissionRequest (200).
type Admission struct {
	Serial string `json:"serial"`
	Batch  string `json:"batch,omitempty"`
	// Revoke are the serials of the device's certificates to revoke at
	// step-ca before the new one is issued (policy allow).
	Revoke []string `json:"revoke,omitempty"`
	// Expires is the end of the lease.
	Expires time.Time `json:"expires"`
}

// AdmissionOutcome is how an admitted enrollment ended.
type AdmissionOutcome string

// Outcomes.
const (
	// OutcomeEnrolled counts the device against its batch for good.
	OutcomeEnrolled AdmissionOutcome = "enrolled"
	// OutcomeReleased gives the place back (the enrollment failed).
	OutcomeReleased AdmissionOutcome = "released"
)

// AdmissionEnd ends an admission of a device (proxy).
type AdmissionEnd struct {
	KeySHA256 string           `json:"keySha256"`
	Batch     string           `json:"batch,omitempty"`
	Outcome   AdmissionOutcome `json:"outcome"`
}

// Admit asks core to admit a board (proxy). A refusal is a *StatusError
// of 409 with CodeAdmissionQuota, CodeAdmissionReenrollment or
// CodeAdmissionInProgress, whose message names the rule.
func (c *Client) Admit(ctx context.Context, r AdmissionRequest) (*Admission, error) {
	var a Admission
	_, err := c.do(ctx, RouteAdmit, RouteAdmit.URL(), nil, r, &a)
	if err != nil {
		return nil, err
	}
	return &a, nil
}

// EndAdmission tells core how an admitted enrollment of serial ended
// (proxy).
func (c *Client) EndAdmission(ctx context.Context, serial string, e AdmissionEnd) error {
	_, err := c.do(ctx, RouteEndAdmission, RouteEndAdmission.URL(serial), nil, e, nil)
	return err
}
