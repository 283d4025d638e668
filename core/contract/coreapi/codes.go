package coreapi

// DeviceStatus is a device's standing in the registry.
type DeviceStatus string

// Device statuses.
const (
	StatusActive  DeviceStatus = "active"
	StatusRevoked DeviceStatus = "revoked"
)

// ErrorCode is the machine-readable part of an error body: clients branch
// on it, never on the message.
type ErrorCode string

// Error codes of core's API; the proxy's add enrollapi's.
const (
	CodeBadRequest       ErrorCode = "bad_request"
	CodeTooLarge         ErrorCode = "too_large"
	CodeUnauthenticated  ErrorCode = "unauthenticated"
	CodeForbidden        ErrorCode = "forbidden"
	CodeNotFound         ErrorCode = "not_found"
	CodeMethodNotAllowed ErrorCode = "method_not_allowed"
	CodeRateLimited      ErrorCode = "rate_limited"
	CodeIfMatchRequired  ErrorCode = "if_match_required"
	CodeVersionConflict  ErrorCode = "version_conflict"
	CodeSerialCollision  ErrorCode = "serial_collision"
	CodeUnknownGroup     ErrorCode = "unknown_group"
	CodeRevoked          ErrorCode = "revoked"
	CodeKeyNotEnrolled   ErrorCode = "key_not_enrolled" // a device key core never recorded: enroll again at a factory
	CodeNotAttested      ErrorCode = "not_attested"     // the group requires a TPM-resident key; this one was not attested
	CodeUnavailable      ErrorCode = "unavailable"
	CodeNotReady         ErrorCode = "not_ready"
	CodeNoBackup         ErrorCode = "no_backup" // core's store is on PostgreSQL: back it up with pg_dump
	CodeInternal         ErrorCode = "internal"
	CodeRolloutActive    ErrorCode = "rollout_active" // the group's data changes only through its active rollout
	CodeRolloutOver      ErrorCode = "rollout_over"   // the rollout is done or aborted
	// Refusals of an admission (POST /v1/admissions, 409), each naming
	// its rule.
	CodeAdmissionQuota        ErrorCode = "admission_quota"        // the batch has used its quota
	CodeAdmissionReenrollment ErrorCode = "admission_reenrollment" // the re-enrollment policy says no
	CodeAdmissionInProgress   ErrorCode = "admission_in_progress"  // another key is being enrolled for the serial
)
