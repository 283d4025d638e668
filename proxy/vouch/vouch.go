// Package vouch is the factory proxy's vouching policy: which networks may
// enroll, which hardware IDs (batch manifests with an enrollment window and
// a quota), what a re-enrollment of a known serial may do, and how fast.
// Every refusal is a *Refusal naming the rule and the reason, which the
// proxy logs, records and answers.
//
// The network, rate, manifest and window rules are decided here, from the
// proxy's own configuration. The quota and the re-enrollment policy are
// decided by core (POST /v1/admissions), which keeps each batch's count
// and each serial's enrollment in progress in its store, shared by every
// proxy of a line and every core replica: this package supplies the
// quota, the policy and the retry window core applies.
package vouch

import (
	"bytes"
	"encoding/csv"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/fleetprov/prov/core/contract/coreapi"
	"github.com/fleetprov/prov/core/contract/hwid"
	"github.com/fleetprov/prov/proxy/contract/enrollapi"
)

// Reenrollment is the policy for a serial that already has a certificate,
// which core applies (coreapi.ReenrollmentPolicy).
type Reenrollment = coreapi.ReenrollmentPolicy

// Re-enrollment policies.
const (
	// Deny refuses it, except a retry of an unfinished enrollment: the
	// same key within the retry window of its certificate.
	Deny = coreapi.ReenrollDeny
	// Allow issues a new certificate for any key; the old ones are
	// revoked and the change is recorded.
	Allow = coreapi.ReenrollAllow
	// SameKeyOnly issues a new certificate only for the key the device
	// had (a device that lost its certificate, not a reflashed card).
	SameKeyOnly = coreapi.ReenrollSameKeyOnly
)

// Refusal is a policy refusal.
type Refusal struct {
	Rule   enrollapi.RefusalRule
	Reason string
	// RetryAfter is set for the rate rule, in seconds.
	RetryAfter int
	// Err, if set, is the typed cause (an attestation's refusal), for
	// errors.Is and errors.As.
	Err error
}

func (r *Refusal) Error() string { return string(r.Rule) + ": " + r.Reason }

func (r *Refusal) Unwrap() error { return r.Err }

func refuse(rule enrollapi.RefusalRule, format string, args ...any) *Refusal {
	return &Refusal{Rule: rule, Reason: fmt.Sprintf(format, args...)}
}

// BatchConfig is one production batch.
type BatchConfig struct {
	Name      string    `yaml:"name"`
	Manifest  string    `yaml:"manifest"` // CSV (board,hardwareId[,ekSha256]) or .json
	Group     string    `yaml:"group"`
	NotBefore time.Time `yaml:"notBefore"`
	NotAfter  time.Time `yaml:"notAfter"`
	Quota     int       `yaml:"quota"` // 0: the number of IDs in the manifest
	// Attestation is "required" for a batch whose boards must prove their
	// key is in their TPM (proxy/attest), or empty. A board the manifest
	// lists an endorsement key for must attest in any case.
	Attestation string `yaml:"attestation"`
}

// AttestationRequired is BatchConfig.Attestation's one value.
const AttestationRequired = "required"

// Batch is a loaded batch.
type Batch struct {
	BatchConfig
	ids map[string]string // hwid.ID.Key() → the EK hash listed for it, or ""
}

// Config is the policy, as configured.
type Config struct {
	Networks     []string      `yaml:"networks"`
	Batches      []BatchConfig `yaml:"batches"`
	Reenrollment Reenrollment  `yaml:"reenrollment"`
	RetryWindow  time.Duration `yaml:"retryWindow"`
	Rate         float64       `yaml:"rate"`  // enrollments per second per source address
	Burst        int           `yaml:"burst"` // and its burst
}

// Policy is the loaded policy.
type Policy struct {
	networks    []netip.Prefix
	batches     []*Batch
	reenroll    Reenrollment
	retryWindow time.Duration
	rate        rate.Limit
	burst       int

	mu       sync.Mutex
	limiters map[netip.Addr]*rate.Limiter
}

// Load validates the configuration and reads the manifests; errors name
// the key or the file and line.
func Load(c Config) (*Policy, error) {
	p := &Policy{reenroll: c.Reenrollment, retryWindow: c.RetryWindow, rate: rate.Limit(c.Rate), burst: c.Burst,
		limiters: map[netip.Addr]*rate.Limiter{}}
	if len(c.Networks) == 0 {
		return nil, errors.New("vouching.networks: name the factory networks that may enroll (CIDRs)")
	}
	for _, n := range c.Networks {
		pfx, err := netip.ParsePrefix(n)
		if err != nil {
			return nil, fmt.Errorf("vouching.networks: %q: %w", n, err)
		}
		p.networks = append(p.networks, pfx.Masked())
	}
	switch p.reenroll {
	case Deny, Allow, SameKeyOnly:
	case "":
		p.reenroll = Deny
	default:
		return nil, fmt.Errorf("vouching.reenrollment: %q is not deny, allow or same-key-only", c.Reenrollment)
	}
	if p.retryWindow == 0 {
		p.retryWindow = 15 * time.Minute
	}
	if p.rate <= 0 {
		p.rate, p.burst = 20, 40
	}
	if p.burst < 1 {
		p.burst = 1
	}
	names := map[string]bool{}
	for i, bc := range c.Batches {
		key := fmt.Sprintf("vouching.batches[%d]", i)
		if bc.Name == "" || names[bc.Name] {
			return nil, fmt.Errorf("%s.name: empty or used twice", key)
		}
		names[bc.Name] = true
		if !bc.NotAfter.IsZero() && !bc.NotAfter.After(bc.NotBefore) {
			return nil, fmt.Errorf("%s: notAfter is not after notBefore", key)
		}
		if bc.Attestation != "" && bc.Attestation != AttestationRequired {
			return nil, fmt.Errorf("%s.attestation: %q; want %q or nothing", key, bc.Attestation, AttestationRequired)
		}
		ids, err := readManifest(bc.Manifest)
		if err != nil {
			return nil, fmt.Errorf("%s.manifest: %w", key, err)
		}
		if bc.Quota == 0 {
			bc.Quota = len(ids)
		}
		if bc.Quota < 0 {
			return nil, fmt.Errorf("%s.quota: negative", key)
		}
		p.batches = append(p.batches, &Batch{BatchConfig: bc, ids: ids})
	}
	return p, nil
}

// readManifest reads a batch manifest: CSV ("board,hardwareId" records,
// with an optional third column "ekSha256": the board's TPM endorsement
// key hash, enrollapi.EKHash, as recorded at bring-up; an optional header
// naming those columns, blank lines and lines starting with # are
// skipped) or, for a .json file, an array of {"board": ...,
// "hardwareId": ..., "ekSha256": ...}. A hardware ID listed twice is an
// error: it is a mistake in the batch, and a quota counted from the
// manifest would be wrong. It maps each ID's key to its EK hash ("" for
// none).
func readManifest(path string) (map[string]string, error) {
	if path == "" {
		return nil, errors.New("no manifest file")
	}
	data, err := os.ReadFile(path) //nolint:gosec // operator's configuration
	if err != nil {
		return nil, err
	}
	type entry struct {
		Board      string `json:"board"`
		HardwareID string `json:"hardwareId"`
		EKSHA256   string `json:"ekSha256"`
		where      string
	}
	var entries []entry
	if strings.EqualFold(filepath.Ext(path), ".json") {
		dec := json.NewDecoder(bytes.NewReader(data))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&entries); err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		for i := range entries {
			entries[i].where = fmt.Sprintf("%s: entry %d", path, i)
		}
	} else {
		r := csv.NewReader(bytes.NewReader(data))
		r.Comment = '#'
		r.FieldsPerRecord = -1 // two or three, checked below
		r.TrimLeadingSpace = true
		for first := true; ; first = false {
			rec, err := r.Read()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				return nil, fmt.Errorf("%s: %w (want board,hardwareId[,ekSha256])", path, err)
			}
			line, _ := r.FieldPos(0)
			if len(rec) != 2 && len(rec) != 3 {
				return nil, fmt.Errorf("%s:%d: %d fields; want board,hardwareId[,ekSha256]", path, line, len(rec))
			}
			if first && strings.EqualFold(rec[0], "board") {
				continue
			}
			e := entry{Board: strings.TrimSpace(rec[0]), HardwareID: strings.TrimSpace(rec[1]), where: fmt.Sprintf("%s:%d", path, line)}
			if len(rec) == 3 {
				e.EKSHA256 = strings.TrimSpace(rec[2])
			}
			entries = append(entries, e)
		}
	}
	ids := map[string]string{}
	for _, e := range entries {
		id, err := hwid.Parse(e.Board, e.HardwareID)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", e.where, err)
		}
		if _, dup := ids[id.Key()]; dup {
			return nil, fmt.Errorf("%s: hardware ID %s is listed twice", e.where, id.Key())
		}
		ek := strings.ToLower(e.EKSHA256)
		if b, err := hex.DecodeString(ek); ek != "" && (err != nil || len(b) != 32) {
			return nil, fmt.Errorf("%s: ekSha256 %q is not 64 hex digits (the SHA-256 of the EK certificate's public key)", e.where, e.EKSHA256)
		}
		ids[id.Key()] = ek
	}
	if len(ids) == 0 {
		return nil, fmt.Errorf("%s: lists no hardware IDs", path)
	}
	return ids, nil
}

// ManifestSize reads a batch manifest as the policy does and returns the
// number of hardware IDs it lists: a batch's planned size, for its report.
func ManifestSize(path string) (int, error) {
	ids, err := readManifest(path)
	if err != nil {
		return 0, fmt.Errorf("batch manifest: %w", err)
	}
	return len(ids), nil
}

// CheckSource refuses addresses outside the factory networks.
func (p *Policy) CheckSource(a netip.Addr) error {
	a = a.Unmap()
	for _, n := range p.networks {
		if n.Contains(a) {
			return nil
		}
	}
	return refuse(enrollapi.RuleNetwork, "%s is not on an allowed factory network", a)
}

// Allow takes a token for the source address.
func (p *Policy) Allow(a netip.Addr, now time.Time) error {
	p.mu.Lock()
	l, ok := p.limiters[a]
	if !ok {
		if len(p.limiters) > 1<<16 {
			p.limiters = map[netip.Addr]*rate.Limiter{} // bounded: forget all, start over
		}
		l = rate.NewLimiter(p.rate, p.burst)
		p.limiters[a] = l
	}
	p.mu.Unlock()
	res := l.ReserveN(now, 1)
	if d := res.DelayFrom(now); d > 0 {
		res.CancelAt(now)
		r := refuse(enrollapi.RuleRate, "more than %g enrollments a second from %s", float64(p.rate), a)
		r.RetryAfter = int(d/time.Second) + 1
		return r
	}
	return nil
}

// Admission is a device that passed the manifest and window rules; core
// decides on its batch's quota and its re-enrollment.
type Admission struct {
	Batch *Batch // nil when no batches are configured
	// EK is the endorsement key hash the manifest lists for the board
	// (enrollapi.EKHash), or "".
	EK string
}

// AttestationRequired says whether the board must prove its key is in
// its TPM: its batch requires it, or its manifest names its TPM.
func (a *Admission) AttestationRequired() bool {
	return a.EK != "" || (a.Batch != nil && a.Batch.Attestation == AttestationRequired)
}

// Group is the group the batch puts its devices in ("" for the default).
func (a *Admission) Group() string {
	if a.Batch == nil {
		return ""
	}
	return a.Batch.Group
}

// Admit checks the manifests and the window for a device whose serial
// core gave; the quota is core's (the batch's Quota, counted by core for
// every proxy).
func (p *Policy) Admit(id hwid.ID, now time.Time) (*Admission, error) {
	if len(p.batches) == 0 {
		return &Admission{}, nil
	}
	var b *Batch
	var ek string
	for _, c := range p.batches {
		if e, ok := c.ids[id.Key()]; ok {
			b, ek = c, e
			break
		}
	}
	if b == nil {
		return nil, refuse(enrollapi.RuleManifest, "hardware ID %s is in no batch manifest", id.Key())
	}
	if !b.NotBefore.IsZero() && now.Before(b.NotBefore) {
		return nil, refuse(enrollapi.RuleWindow, "batch %s opens at %s", b.Name, b.NotBefore.UTC().Format(time.RFC3339))
	}
	if !b.NotAfter.IsZero() && !now.Before(b.NotAfter) {
		return nil, refuse(enrollapi.RuleWindow, "batch %s closed at %s", b.Name, b.NotAfter.UTC().Format(time.RFC3339))
	}
	return &Admission{Batch: b, EK: ek}, nil
}

// Reenrollment is the re-enrollment policy core applies for this proxy.
func (p *Policy) Reenrollment() Reenrollment { return p.reenroll }

// RetryWindow is how long after its certificate the same key may finish
// an unfinished enrollment (policy deny).
func (p *Policy) RetryWindow() time.Duration { return p.retryWindow }

// CoreRefusal is core's refusal of an admission as the policy refusal the
// proxy answers, or nil if err is none.
func CoreRefusal(err error) *Refusal {
	var se *coreapi.StatusError
	if !errors.As(err, &se) || se.Status != http.StatusConflict {
		return nil
	}
	switch se.Body.Code {
	case coreapi.CodeAdmissionQuota:
		return &Refusal{Rule: enrollapi.RuleQuota, Reason: se.Body.Message}
	case coreapi.CodeAdmissionReenrollment, coreapi.CodeAdmissionInProgress:
		// Another key being enrolled for the serial is a re-enrollment
		// in all but timing: the device hears the same rule.
		return &Refusal{Rule: enrollapi.RuleReenrollment, Reason: se.Body.Message}
	}
	return nil
}

// BatchInfo is what the console shows of a configured batch.
type BatchInfo struct {
	BatchConfig
	// Size is how many boards its manifest lists.
	Size int
}

// Batches are the configured batches, in configuration order.
func (p *Policy) Batches() []BatchInfo {
	out := make([]BatchInfo, 0, len(p.batches))
	for _, b := range p.batches {
		out = append(out, BatchInfo{BatchConfig: b.BatchConfig, Size: len(b.ids)})
	}
	return out
}
