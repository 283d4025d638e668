// Package enrollapi is the wire contract between a new device and the factory
// proxy: POST /v1/enroll. The device client links it; standard library
// only.
package enrollapi

// PathEnroll is the enrollment route.
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

// Error is the body of every error answer; Reason names the rule or the
// field that refused.
type Error struct {
	Code   string `json:"error"`
	Reason string `json:"reason"`
}
