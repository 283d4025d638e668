package stepca

// What step-ca v0.30.2 sends and accepts, as small local types: the JSON
// names are the ones in its source (api/api.go, api/sign.go, api/renew.go,
// api/revoke.go, errs/error.go). Certificates and CSRs travel as PEM
// strings (api.Certificate and api.CertificateRequest marshal that way).

// signRequest is api.SignRequest (POST /1.0/sign).
type signRequest struct {
	CSR string `json:"csr"` // PEM CERTIFICATE REQUEST
	OTT string `json:"ott"`
	// NotAfter is provisioner.TimeDuration: an RFC 3339 time or a Go
	// duration; empty leaves the provisioner's default.
	NotAfter string `json:"notAfter,omitempty"`
}

// signResponse is api.SignResponse, the answer of /1.0/sign and of
// /1.0/renew (201 Created). certChain is the whole chain, leaf first; crt
// and ca are the leaf and its issuer, for older servers.
type signResponse struct {
	Crt       string   `json:"crt"`
	CA        string   `json:"ca"`
	CertChain []string `json:"certChain"`
}

// revokeRequest is api.RevokeRequest (POST /1.0/revoke).
type revokeRequest struct {
	Serial     string `json:"serial"` // decimal, or hex with 0x
	OTT        string `json:"ott"`
	ReasonCode int    `json:"reasonCode"` // RFC 5280 reason; 0 unspecified
	Reason     string `json:"reason"`
	// Passive must be true: step-ca answers 501 to anything else.
	Passive bool `json:"passive"`
}

// statusResponse is api.HealthResponse (GET /health, {"status":"ok"}) and
// api.RevokeResponse ({"status":"ok"}).
type statusResponse struct {
	Status string `json:"status"`
}

// rootsResponse is api.RootsResponse (GET /roots, 201 Created).
type rootsResponse struct {
	Certificates []string `json:"crts"`
}

// errorResponse is errs.ErrorResponse, the body of every refusal.
type errorResponse struct {
	Status  int    `json:"status"`
	Message string `json:"message"`
}
