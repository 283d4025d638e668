package status

import "time"

// Health is what the console's health panel shows: whether the proxy can
// enroll a board now, and what will stop it soon. The proxy's service
// fills it (a check every few seconds, never on the enrollment path).
type Health struct {
	Checked   time.Time  `json:"checked"`
	Upstreams []Upstream `json:"upstreams"` // core, step-ca
	// Certificates are the proxy's own (its identity; the console's, if
	// it has one of its own), with their ends.
	Certificates []Certificate `json:"certificates"`
	Provisioner  Provisioner   `json:"provisioner"`
	// ClockOffsetMs is core's clock minus the proxy's, from core's Date
	// header (whole seconds, so within ±1 s); nil when core did not
	// answer. Certificates are issued for "now": a proxy whose clock is
	// off issues certificates devices take as not yet valid.
	ClockOffsetMs *int64 `json:"clockOffsetMs,omitempty"`
	Record        Record `json:"record"`
}

// Upstream is core or step-ca as last checked, over the connection pinned
// to its certificate.
type Upstream struct {
	Name      string  `json:"name"`
	URL       string  `json:"url"`
	OK        bool    `json:"ok"`
	Error     string  `json:"error,omitempty"`
	LatencyMs float64 `json:"latencyMs"`
}

// Certificate is one of the proxy's certificates.
type Certificate struct {
	Name      string    `json:"name"`
	Subject   string    `json:"subject"`
	NotBefore time.Time `json:"notBefore"`
	NotAfter  time.Time `json:"notAfter"`
}

// Provisioner is the proxy's step-ca provisioner: its key does not expire,
// but step-ca must still list it with this key, or every enrollment fails
// at signing.
type Provisioner struct {
	Name  string `json:"name"`
	KeyID string `json:"keyId"`
	OK    bool   `json:"ok"`
	Error string `json:"error,omitempty"`
	// Lifetime is the device certificates' lifetime step-ca gives.
	Lifetime string `json:"lifetime,omitempty"`
}

// Record is the factory record's state: its file read again and its
// chain verified at every check (an edit on disk shows within one).
type Record struct {
	Path        string    `json:"path"`
	Verified    bool      `json:"verified"`
	Error       string    `json:"error,omitempty"`
	VerifiedSeq uint64    `json:"verifiedSeq"`
	VerifiedAt  time.Time `json:"verifiedAt,omitzero"`
}
