// Package enrollapi is the wire contract between a new device and the
// factory proxy: the route table, the enrollment request and answer, and
// the error codes and refusal rules a factory operator reads.
//
// Contract: linked by prov-proxy and prov-device. A change here reaches
// boards in the field: devices enroll with the client their rootfs was built
// with, so add, never rename or remove.
package enrollapi

import (
	"net/http"

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
)

// ConsoleRoutes are the factory console's routes (RouteStatusPage is its
// page): served on the enrollment listener and on the console's own
// listener, if it has one.
var ConsoleRoutes = []coreapi.Route{RouteStatusPage, RouteConsoleState, RouteConsoleEvents, RouteConsoleScript, RouteConsoleStyle, RouteConsoleReport, RouteHealthz}

// Routes is every route of the proxy.
var Routes = []coreapi.Route{RouteEnroll, RouteStatusPage, RouteHealthz, RouteReadyz, RouteMetrics, RouteConsoleState, RouteConsoleEvents,
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
)

// Code is the error code of a refusal by the rule: "refused_<rule>".
func (r RefusalRule) Code() coreapi.ErrorCode { return coreapi.ErrorCode("refused_" + string(r)) }

// Error codes of the proxy besides refusals and core's bad_request,
// internal and not_ready.
const (
	// CodeUpstream: core or step-ca failed during the enrollment; retry.
	CodeUpstream coreapi.ErrorCode = "upstream"
)
