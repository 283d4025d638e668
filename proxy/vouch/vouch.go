// Package vouch is the factory proxy's vouching policy: which networks may
// enroll, which hardware IDs (batch manifests with an enrollment window and
// a quota), what a re-enrollment of a known serial may do, and how fast.
// Every refusal is a *Refusal naming the rule and the reason, which the
// proxy logs, records and answers.
package vouch

import (
	"bytes"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"io"
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

// Reenrollment is the policy for a serial that already has a certificate.
type Reenrollment string

// Re-enrollment policies.
const (
	// Deny refuses it, except a retry of an unfinished enrollment: the
	// same key within the retry window of its certificate.
	Deny Reenrollment = "deny"
	// Allow issues a new certificate for any key; the old ones are
	// revoked and the change is recorded.
	Allow Reenrollment = "allow"
	// SameKeyOnly issues a new certificate only for the key the device
	// had (a device that lost its certificate, not a reflashed card).
	SameKeyOnly Reenrollment = "same-key-only"
)

// Refusal is a policy refusal.
type Refusal struct {
	Rule   enrollapi.RefusalRule
	Reason string
	// RetryAfter is set for the rate rule, in seconds.
	RetryAfter int
}

func (r *Refusal) Error() string { return string(r.Rule) + ": " + r.Reason }

func refuse(rule enrollapi.RefusalRule, format string, args ...any) *Refusal {
	return &Refusal{Rule: rule, Reason: fmt.Sprintf(format, args...)}
}

// BatchConfig is one production batch.
type BatchConfig struct {
	Name      string    `yaml:"name"`
	Manifest  string    `yaml:"manifest"` // CSV (board,hardwareId) or .json
	Group     string    `yaml:"group"`
	NotBefore time.Time `yaml:"notBefore"`
	NotAfter  time.Time `yaml:"notAfter"`
	Quota     int       `yaml:"quota"` // 0: the number of IDs in the manifest
}

// Batch is a loaded batch.
type Batch struct {
	BatchConfig
	ids map[string]bool // hwid.ID.Key()
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
	used     map[string]map[string]bool // batch -> serials enrolled
	reserved map[string]map[string]int  // batch -> serials being enrolled
}

// Load validates the configuration and reads the manifests; errors name
// the key or the file and line.
func Load(c Config) (*Policy, error) {
	p := &Policy{reenroll: c.Reenrollment, retryWindow: c.RetryWindow, rate: rate.Limit(c.Rate), burst: c.Burst,
		limiters: map[netip.Addr]*rate.Limiter{}, used: map[string]map[string]bool{}, reserved: map[string]map[string]int{}}
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

// readManifest reads a batch manifest: CSV ("board,hardwareId" records;
// an optional header naming those columns, blank lines and lines starting
// with # are skipped) or, for a .json file, an array of
// {"board": ..., "hardwareId": ...}. A hardware ID listed twice is an
// error: it is a mistake in the batch, and a quota counted from the
// manifest would be wrong.
func readManifest(path string) (map[string]bool, error) {
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
		r.FieldsPerRecord = 2
		r.TrimLeadingSpace = true
		for first := true; ; first = false {
			rec, err := r.Read()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				return nil, fmt.Errorf("%s: %w (want board,hardwareId)", path, err)
			}
			line, _ := r.FieldPos(0)
			if first && strings.EqualFold(rec[0], "board") {
				continue
			}
			entries = append(entries, entry{Board: strings.TrimSpace(rec[0]), HardwareID: strings.TrimSpace(rec[1]), where: fmt.Sprintf("%s:%d", path, line)})
		}
	}
	ids := map[string]bool{}
	for _, e := range entries {
		id, err := hwid.Parse(e.Board, e.HardwareID)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", e.where, err)
		}
		if ids[id.Key()] {
			return nil, fmt.Errorf("%s: hardware ID %s is listed twice", e.where, id.Key())
		}
		ids[id.Key()] = true
	}
	if len(ids) == 0 {
		return nil, fmt.Errorf("%s: lists no hardware IDs", path)
	}
	return ids, nil
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

// Admission is a device admitted by the batch rules; Done ends it.
type Admission struct {
	Batch *Batch // nil when no batches are configured
	p     *Policy
	// serial whose quota place is reserved
	serial string
	done   bool
}

// Group is the group the batch puts its devices in ("" for the default).
func (a *Admission) Group() string {
	if a.Batch == nil {
		return ""
	}
	return a.Batch.Group
}

// Admit checks the manifests, the window and the quota for a device whose
// serial core gave, and reserves its quota place until Done.
func (p *Policy) Admit(id hwid.ID, serial string, now time.Time) (*Admission, error) {
	if len(p.batches) == 0 {
		return &Admission{p: p}, nil
	}
	var b *Batch
	for _, c := range p.batches {
		if c.ids[id.Key()] {
			b = c
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
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.used[b.Name][serial] && p.reserved[b.Name][serial] == 0 {
		if n := len(p.used[b.Name]) + len(p.reserved[b.Name]); n >= b.Quota {
			return nil, refuse(enrollapi.RuleQuota, "batch %s has used its quota of %d devices", b.Name, b.Quota)
		}
	}
	if p.reserved[b.Name] == nil {
		p.reserved[b.Name] = map[string]int{}
	}
	p.reserved[b.Name][serial]++
	return &Admission{Batch: b, p: p, serial: serial}, nil
}

// Done releases the reservation; enrolled counts the device against the
// batch's quota for good.
func (a *Admission) Done(enrolled bool) {
	if a.Batch == nil || a.done {
		return
	}
	a.done = true
	p := a.p
	p.mu.Lock()
	defer p.mu.Unlock()
	name := a.Batch.Name
	if p.reserved[name][a.serial]--; p.reserved[name][a.serial] <= 0 {
		delete(p.reserved[name], a.serial)
	}
	if enrolled {
		p.markUsed(name, a.serial)
	}
}

// Replay counts an enrollment from the factory record (at start).
func (p *Policy) Replay(batch, serial string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.markUsed(batch, serial)
}

func (p *Policy) markUsed(batch, serial string) {
	if p.used[batch] == nil {
		p.used[batch] = map[string]bool{}
	}
	p.used[batch][serial] = true
}

// Reenroll decides on a serial that may already have certificates: it
// returns the serials of certificates to revoke (Allow), or a refusal.
func (p *Policy) Reenroll(issued []coreapi.IssuedCertificate, keySHA256 string, now time.Time) ([]string, error) {
	if len(issued) == 0 {
		return nil, nil
	}
	sameKey, recent := false, false
	for _, c := range issued {
		if c.KeySHA256 == keySHA256 {
			sameKey = true
			if now.Sub(c.NotBefore) <= p.retryWindow+2*time.Minute { // NotBefore is backdated by step-ca
				recent = true
			}
		}
	}
	switch p.reenroll {
	case Allow:
		var revoke []string
		for _, c := range issued {
			if c.KeySHA256 != keySHA256 && c.NotAfter.After(now) {
				revoke = append(revoke, c.Serial)
			}
		}
		return revoke, nil
	case SameKeyOnly:
		if sameKey {
			return nil, nil
		}
		return nil, refuse(enrollapi.RuleReenrollment, "the device is enrolled with another key; policy same-key-only")
	default:
		if sameKey && recent {
			return nil, nil // a retry of an unfinished enrollment
		}
		return nil, refuse(enrollapi.RuleReenrollment, "the device is already enrolled; policy deny")
	}
}
