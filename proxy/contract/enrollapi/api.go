// Package enrollapi is the wire contract between a new device and the
// factory proxy: the route table, the enrollment request and answer, and
// the error codes and refusal rules a factory operator reads.
//
// Contract: linked by prov-proxy and prov-device. A change here reaches
// boards in the field: devices enroll with the client their rootfs was built
// with, so add, never rename or remove.
package enrollapi

import (
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"time"

	"github.com/fleetprov/prov/core/contract/coreapi"
)

// The proxy's routes, on TLS with the proxy's certificate; devices have
// none yet, so no route asks for one (the factory network policy decides).
var (
	RouteEnroll     = coreapi.Route{Name: "enroll", Method: http.MethodPost, Path: "/v1/enroll"}
	RouteStatusPage = coreapi.Route{Name: "status_page", Method: http.MethodGet, Path: "/"}
	RouteHealthz    = coreapi.Route{Name: "healthz", Method: http.MethodGet, Path: "/healthz"}
	RouteReadyz     = coreapi.Route{Name: "readyz", Method: http.MethodGet, Path: "/readyz"}
	RouteMetrics    = coreapi.Route{Name: "metrics", Method: http.MethodGet, Path: "/metrics"}
	// The console's whole state (JSON), and each attempt as it is
	// recorded (server-sent events): the factory network only, read-only.
	RouteConsoleState  = coreapi.Route{Name: "console_state", Method: http.MethodGet, Path: "/console/state"}
	RouteConsoleEvents = coreapi.Route{Name: "console_events", Method: http.MethodGet, Path: "/console/events"}
	// The page's script and style, its own files so that its
	// Content-Security-Policy allows no inline code at all.
	RouteConsoleScript = coreapi.Route{Name: "console_script", Method: http.MethodGet, Path: "/console/console.js"}
	RouteConsoleStyle  = coreapi.Route{Name: "console_style", Method: http.MethodGet, Path: "/console/console.css"}
	// A batch's signed report (?batch=B&format=csv|json, &part=sig for
	// its detached signature, &part=chain for the proxy's chain).
	RouteConsoleReport = coreapi.Route{Name: "console_report", Method: http.MethodGet, Path: "/console/report"}
	// A board whose key is in a TPM asks for an attestation challenge
	// first (ChallengeRequest), then enrolls with the answer
	// (EnrollRequest.Attestation).
	RouteEnrollChallenge = coreapi.Route{Name: "enroll_challenge", Method: http.MethodPost, Path: "/v1/enroll/challenge"}
)

// ConsoleRoutes are the factory console's routes (RouteStatusPage is its
// page): served on the enrollment listener and on the console's own
// listener, if it has one.
var ConsoleRoutes = []coreapi.Route{RouteStatusPage, RouteConsoleState, RouteConsoleEvents, RouteConsoleScript, RouteConsoleStyle, RouteConsoleReport, RouteHealthz}

// Routes is every route of the proxy.
var Routes = []coreapi.Route{RouteEnroll, RouteEnrollChallenge, RouteStatusPage, RouteHealthz, RouteReadyz, RouteMetrics, RouteConsoleState, RouteConsoleEvents,
	RouteConsoleScript, RouteConsoleStyle, RouteConsoleReport}

// PathEnroll is the enrollment route's path.
const PathEnroll = "/v1/enroll"

// MaxRequestBody bounds an enrollment request.
const MaxRequestBody = 64 << 10

// EnrollRequest is what a device sends: its board, its hardware ID as it
// read it, and a CSR for the key it made (the key never leaves it). The CSR
// names nothing: the proxy decides the identity.
type EnrollRequest struct {
	Board      string `json:"board"`
	HardwareID string `json:"hardwareId"`
	CSR        string `json:"csr"` // PEM
	// Attestation, from a board whose key is in a TPM, proves the CSR's
	// key resident in the TPM whose endorsement key the challenge named.
	Attestation *Attestation `json:"attestation,omitempty"`
}

// ChallengeRequest starts an attested enrollment: the board's TPM's
// endorsement key certificate and the public area of an attestation key
// it made in that TPM. Byte fields are base64 (standard, padded), as
// encoding/json writes them.
type ChallengeRequest struct {
	Board      string `json:"board"`
	HardwareID string `json:"hardwareId"`
	// EKCert is the endorsement key's certificate (DER) as the TPM's
	// manufacturer wrote it into NV memory (RSA 2048: index EKCertIndexRSA).
	EKCert []byte `json:"ekCert"`
	// AKPublic is the attestation key's TPM2B_PUBLIC: a restricted
	// signing key, fixedTPM and fixedParent, made inside the TPM.
	AKPublic []byte `json:"akPublic"`
}

// ChallengeResponse is the proxy's challenge: a credential only the TPM
// holding both the endorsement key and the attestation key can open
// (TPM2_MakeCredential to the EK for the AK's name), and a nonce for the
// certification of the device key. Single use, until Expires.
type ChallengeResponse struct {
	ID string `json:"id"`
	// Credential is the TPM2B_ID_OBJECT and Secret the
	// TPM2B_ENCRYPTED_SECRET of TPM2_ActivateCredential's inputs.
	Credential []byte    `json:"credential"`
	Secret     []byte    `json:"secret"`
	Nonce      []byte    `json:"nonce"`
	Expires    time.Time `json:"expires"`
}

// Attestation is the board's answer to a challenge, sent with its CSR.
type Attestation struct {
	// Challenge is ChallengeResponse.ID.
	Challenge string `json:"challenge"`
	// Activated is what TPM2_ActivateCredential returned: proof that the
	// attestation key is in the TPM of the endorsement key.
	Activated []byte `json:"activated"`
	// KeyPublic is the device key's TPM2B_PUBLIC (the CSR's key).
	KeyPublic []byte `json:"keyPublic"`
	// CertifyInfo is the TPM2B_ATTEST of TPM2_Certify of the device key by
	// the attestation key with QualifyingData as its qualifying data, and
	// Signature the attestation key's TPMT_SIGNATURE over it.
	CertifyInfo []byte `json:"certifyInfo"`
	Signature   []byte `json:"signature"`
}

// EKCertIndexRSA is the NV index of the RSA 2048 endorsement key's
// certificate (TCG EK Credential Profile); the EK itself is the primary
// key of the endorsement hierarchy made from the profile's default RSA
// template (go-tpm's tpm2.RSAEKTemplate).
const EKCertIndexRSA = 0x01c00002

// QualifyingData binds a certification of the device key to one
// enrollment: SHA-256 over the challenge's nonce, the SHA-256 of the CSR
// (DER) and the hardware ID, so an attestation cannot be replayed for
// another challenge, another key request or another board.
func QualifyingData(nonce, csrDER []byte, hardwareID string) []byte {
	csr := sha256.Sum256(csrDER)
	h := sha256.New()
	h.Write(nonce)
	h.Write(csr[:])
	h.Write([]byte(hardwareID))
	return h.Sum(nil)
}

// EKHash names an endorsement key: the SHA-256 of its certificate's
// SubjectPublicKeyInfo (DER), hex. Batch manifests list it per board,
// certificates and core's records carry it.
func EKHash(spki []byte) string {
	sum := sha256.Sum256(spki)
	return hex.EncodeToString(sum[:])
}

// EnrollResponse is everything a device needs to live in the field.
type EnrollResponse struct {
	Serial string `json:"serial"`
	// Certificate is the device's chain, PEM, leaf first.
	Certificate string `json:"certificate"`
	// Root is the deployment's root, PEM (the one the device already has).
	Root string `json:"root"`
	// CoreURL is where the device fetches its bundle (mTLS).
	CoreURL string `json:"coreUrl"`
	// CAURL is the step-ca the device renews its certificate at.
	CAURL string `json:"caUrl"`
	// MQTTURL is the broker (tls://host:port) and MQTTTopic its topic.
	MQTTURL   string `json:"mqttUrl"`
	MQTTTopic string `json:"mqttTopic"`
	// Bundle is the first signed bundle, base64 (standard, padded).
	Bundle string `json:"bundle"`
	// Generation is the bundle's generation.
	Generation uint64 `json:"generation"`
}

// Error is the body of every error answer: the same as core's, one shape
// on both services. Message names the rule or the field that refused.
type Error = coreapi.Error

// RefusalRule is the rule of the vouching policy that refused a device.
type RefusalRule string

// Refusal rules.
const (
	RuleNetwork      RefusalRule = "network"      // the source is on no allowed factory network
	RuleRate         RefusalRule = "rate"         // too many attempts from the source (429, Retry-After)
	RuleManifest     RefusalRule = "manifest"     // the hardware ID is in no batch manifest
	RuleWindow       RefusalRule = "window"       // its batch is not open now
	RuleQuota        RefusalRule = "quota"        // its batch has used its quota
	RuleReenrollment RefusalRule = "reenrollment" // the re-enrollment policy says no, or core has it revoked
	RuleAttestation  RefusalRule = "attestation"  // the TPM attestation is missing, does not verify, or names another TPM
)

// Code is the error code of a refusal by the rule: "refused_<rule>".
func (r RefusalRule) Code() coreapi.ErrorCode { return coreapi.ErrorCode("refused_" + string(r)) }

// Error codes of the proxy besides refusals and core's bad_request,
// internal and not_ready.
const (
	// CodeUpstream: core or step-ca failed during the enrollment; retry.
	CodeUpstream coreapi.ErrorCode = "upstream"
)
