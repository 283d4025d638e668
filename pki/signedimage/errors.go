package signedimage

import (
	"errors"
	"fmt"
)

// Reason is the name of a refusal, in the words docs/image-format.md uses
// for it: what `prov-device verify` prints, what `prov-device status
// --json` reports and what the conformance suite expects. It is also an
// error, so each reason is a sentinel matched with errors.Is.
type Reason string

func (r Reason) Error() string { return string(r) }

// The refusals. The words are a contract: scripts and people search for
// them, another verifier reports them.
const (
	ReasonTruncated         Reason = "truncated"
	ReasonMalformed         Reason = "malformed"
	ReasonUnsupportedFormat Reason = "unsupported format"
	ReasonUntrustedSigner   Reason = "untrusted signer"
	ReasonBadSignature      Reason = "bad signature"
	ReasonBadIssueTime      Reason = "bad issue time"
	ReasonWrongDevice       Reason = "wrong device"
	ReasonRollback          Reason = "rollback"
	ReasonTooLarge          Reason = "too large"
	ReasonDigestMismatch    Reason = "digest mismatch"
	// ReasonBadImage is a refusal of the pre-mount inspection
	// (deviceclient/inspect), which names its own checks.
	ReasonBadImage Reason = "bad image"
	// ReasonMetadataMismatch: /etc/prov/image.json is not the statement's.
	ReasonMetadataMismatch Reason = "metadata mismatch"
)

// The sentinel errors, one per reason: errors.Is(err, ErrRollback) holds
// for every refusal named rollback.
var (
	ErrTruncated         error = ReasonTruncated
	ErrMalformed         error = ReasonMalformed
	ErrUnsupportedFormat error = ReasonUnsupportedFormat
	ErrUntrustedSigner   error = ReasonUntrustedSigner
	ErrBadSignature      error = ReasonBadSignature
	ErrBadIssueTime      error = ReasonBadIssueTime
	ErrWrongDevice       error = ReasonWrongDevice
	ErrRollback          error = ReasonRollback
	ErrTooLarge          error = ReasonTooLarge
	ErrDigestMismatch    error = ReasonDigestMismatch
	ErrBadImage          error = ReasonBadImage
	ErrMetadataMismatch  error = ReasonMetadataMismatch
)

// Step is the number of a check in docs/image-format.md, section 3: a
// verifier runs them in this order and refuses at the first that fails.
type Step int

// The checks, in the order they run; each has one Reason (Step.Reason).
const (
	StepPrefix          Step = 1  // 12 bytes of magic and size
	StepMagic           Step = 2  // the magic
	StepStatementSize   Step = 3  // 1 <= n <= 65536
	StepStatement       Step = 4  // n bytes of statement
	StepCompact         Step = 5  // three canonical base64url parts
	StepHeaderJSON      Step = 6  // the JSON rules
	StepHeaderMembers   Step = 7  // alg, typ, x5c and their types
	StepAlgorithm       Step = 8  // EdDSA, prov-image+jws
	StepCertificates    Step = 9  // 1 to 4 certificates that parse
	StepIssuingOrder    Step = 10 // leaf, then each issuer, to a pinned root
	StepPathRules       Step = 11 // the CA rules
	StepSignerRules     Step = 12 // the signer certificate's rules
	StepValidity        Step = 13 // valid at the clock (a fetched bundle)
	StepSignature       Step = 14 // Ed25519
	StepPayloadJSON     Step = 15 // the JSON rules
	StepFormat          Step = 16 // format 1
	StepPayloadMembers  Step = 17 // the six members, types and ranges
	StepIssueTime       Step = 18 // issuedAt while the path is valid
	StepDevice          Step = 19 // the verifier's serial
	StepGeneration      Step = 20 // the high-water mark
	StepSizeLimit       Step = 21 // length <= the cap
	StepImage           Step = 22 // length bytes of image
	StepTrailing        Step = 23 // nothing after them
	StepDigest          Step = 24 // SHA-256
	StepInspection      Step = 25 // first of 25-39: the pre-mount inspection
	StepInspectionLast  Step = 39 // last step reserved for the inspection
	StepMetadata        Step = 40 // /etc/prov/image.json
	firstInspectionStep      = StepInspection
)

// stepReasons is the one table of which check refuses with which name;
// docs/image-format.md lists the same (TestSpecificationSteps).
var stepReasons = map[Step]Reason{
	StepPrefix: ReasonTruncated, StepMagic: ReasonMalformed, StepStatementSize: ReasonMalformed,
	StepStatement: ReasonTruncated, StepCompact: ReasonMalformed, StepHeaderJSON: ReasonMalformed,
	StepHeaderMembers: ReasonMalformed, StepAlgorithm: ReasonMalformed, StepCertificates: ReasonMalformed,
	StepIssuingOrder: ReasonUntrustedSigner, StepPathRules: ReasonUntrustedSigner, StepSignerRules: ReasonUntrustedSigner,
	StepValidity: ReasonUntrustedSigner, StepSignature: ReasonBadSignature, StepPayloadJSON: ReasonMalformed,
	StepFormat: ReasonUnsupportedFormat, StepPayloadMembers: ReasonMalformed, StepIssueTime: ReasonBadIssueTime,
	StepDevice: ReasonWrongDevice, StepGeneration: ReasonRollback, StepSizeLimit: ReasonTooLarge,
	StepImage: ReasonTruncated, StepTrailing: ReasonTooLarge, StepDigest: ReasonDigestMismatch,
	StepMetadata: ReasonMetadataMismatch,
}

// Reason is the name the step refuses with.
func (s Step) Reason() Reason {
	if s >= firstInspectionStep && s <= StepInspectionLast {
		return ReasonBadImage
	}
	return stepReasons[s]
}

// Steps lists the numbered checks outside the inspection's range, in order.
func Steps() []Step {
	var out []Step
	for s := StepPrefix; s <= StepMetadata; s++ {
		if _, ok := stepReasons[s]; ok {
			out = append(out, s)
		}
	}
	return out
}

// Error is a refusal: the step that refused, its reason, and what exactly
// was wrong. errors.Is matches it against its reason's sentinel and
// against whatever the detail wraps.
type Error struct {
	Step   Step
	Reason Reason
	Err    error
}

// Refuse is the refusal of step, for the reason of that step.
func Refuse(step Step, detail error) *Error {
	return &Error{Step: step, Reason: step.Reason(), Err: detail}
}

func refusef(step Step, format string, a ...any) *Error {
	return Refuse(step, fmt.Errorf(format, a...))
}

func (e *Error) Error() string {
	return fmt.Sprintf("%s (step %d of docs/image-format.md): %v", e.Reason, e.Step, e.Err)
}

// Unwrap gives the reason and the detail.
func (e *Error) Unwrap() []error { return []error{e.Reason, e.Err} }

// RefusalOf returns the refusal err carries, if any.
func RefusalOf(err error) (*Error, bool) {
	var e *Error
	ok := errors.As(err, &e)
	return e, ok
}
