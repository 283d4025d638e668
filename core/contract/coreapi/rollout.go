package coreapi

import (
	"context"
	"net/http"
	"strconv"
	"time"
)

// RolloutState is where a rollout stands.
type RolloutState string

// Rollout states. Running and paused are active: a group has at most one
// active rollout, and its data changes only through it meanwhile.
const (
	RolloutRunning RolloutState = "running" // core releases each wave once the one before is healthy enough
	RolloutPaused  RolloutState = "paused"  // by an admin, or on its own (Reason): nothing more is released
	RolloutDone    RolloutState = "done"    // every member released
	RolloutAborted RolloutState = "aborted" // the group's data is back to what it was, as a new version
)

// Active says whether the rollout still holds its group.
func (s RolloutState) Active() bool { return s == RolloutRunning || s == RolloutPaused }

// RolloutPolicy says when a wave is healthy enough for the next one, and
// when a rollout pauses on its own.
type RolloutPolicy struct {
	// MinHealthyPercent of a wave must report healthy at their new
	// generation before the next wave is released (default 100).
	MinHealthyPercent float64 `json:"minHealthyPercent,omitempty"`
	// MaxFailedPercent of a wave may fail; one more pauses the rollout
	// (default 0: the first failure pauses it).
	MaxFailedPercent float64 `json:"maxFailedPercent,omitempty"`
	// WaveTimeoutSeconds: a wave not healthy enough by then pauses the
	// rollout (default 1800).
	WaveTimeoutSeconds int `json:"waveTimeoutSeconds,omitempty"`
}

// Policy defaults.
const (
	DefaultMinHealthyPercent  = 100
	DefaultWaveTimeoutSeconds = 1800
)

// WithDefaults fills the policy's unset fields.
func (p RolloutPolicy) WithDefaults() RolloutPolicy {
	if p.MinHealthyPercent == 0 {
		p.MinHealthyPercent = DefaultMinHealthyPercent
	}
	if p.WaveTimeoutSeconds == 0 {
		p.WaveTimeoutSeconds = DefaultWaveTimeoutSeconds
	}
	return p
}

// RolloutRequest starts a staged change of a group's data (admin; POST
// /v1/groups/{group}/rollouts with If-Match: the group's version). The
// waves are: the Canary boards by serial (if any), then either Percent
// (cumulative percentages of the group's members, e.g. [10, 50]) or
// Sizes (how many more members each wave releases), chosen in an order
// fixed by the rollout; a last wave releases the rest.
type RolloutRequest struct {
	Set     map[string]string `json:"set,omitempty"`
	Unset   []string          `json:"unset,omitempty"`
	Canary  []string          `json:"canary,omitempty"`
	Percent []float64         `json:"percent,omitempty"`
	Sizes   []int             `json:"sizes,omitempty"`
	Policy  RolloutPolicy     `json:"policy"`
}

// Wave is one wave of a rollout as core resolved it at the start.
type Wave struct {
	// Serials are a named wave's boards (the canaries).
	Serials []string `json:"serials,omitempty"`
	// Size is how many held members the wave releases; the last wave
	// releases every member still held.
	Size int  `json:"size,omitempty"`
	Rest bool `json:"rest,omitempty"`
}

// WaveStatus is how a released wave is doing: its members at their new
// generation, by their latest reports.
type WaveStatus struct {
	Wave    int `json:"wave"`
	Members int `json:"members"`
	Healthy int `json:"healthy"`
	Failed  int `json:"failed"`
	// Pending have not reported their new generation healthy or failed.
	Pending int `json:"pending"`
	// Failures are some failed members with their errors.
	Failures []WaveFailure `json:"failures,omitempty"`
}

// WaveFailure is a member that failed its new generation.
type WaveFailure struct {
	Serial string `json:"serial"`
	Error  string `json:"error"`
}

// Rollout is a staged change of a group's data.
type Rollout struct {
	ID    uint64       `json:"id"`
	Group string       `json:"group"`
	State RolloutState `json:"state"`
	// Reason says why it paused on its own, or why an admin paused,
	// resumed, forced or aborted it.
	Reason string `json:"reason,omitempty"`
	// FromVersion is the group's version it started from (the data the
	// held members keep), ToVersion the one it rolls out, AbortVersion
	// the one an abort made with FromVersion's data.
	FromVersion  uint64        `json:"fromVersion"`
	ToVersion    uint64        `json:"toVersion"`
	AbortVersion uint64        `json:"abortVersion,omitempty"`
	Change       []string      `json:"change"` // the keys set and unset
	Waves        []Wave        `json:"waves"`
	Released     int           `json:"released"` // waves released so far
	ReleasedAt   time.Time     `json:"releasedAt,omitzero"`
	Policy       RolloutPolicy `json:"policy"`
	Members      int           `json:"members"` // the group's members at the start
	CreatedBy    string        `json:"createdBy"`
	CreatedAt    time.Time     `json:"createdAt"`
	UpdatedAt    time.Time     `json:"updatedAt"`
	// Rev counts the rollout's changes: its ETag, and If-Match of an
	// admin's pause, resume, force or abort.
	Rev uint64 `json:"rev"`
	// Status is filled when one rollout is read: each released wave, and
	// the members still held.
	Status []WaveStatus `json:"status,omitempty"`
	Held   int          `json:"held,omitempty"`
}

// RolloutAction is an admin's say on a rollout (POST
// /v1/rollouts/{rollout}/{pause,resume,force,abort} with If-Match: its
// rev).
type RolloutAction struct {
	Reason string `json:"reason"`
}

// RolloutList is a group's rollouts, newest first.
type RolloutList struct {
	Rollouts []Rollout `json:"rollouts"`
}

// Fleet is what a group's members run (GET /v1/groups/{group}/fleet).
type Fleet struct {
	Group   string `json:"group"`
	Version uint64 `json:"version"`
	Members int    `json:"members"`
	// Generations counts members by the generation they report running
	// ("none" for those that never reported).
	Generations map[string]int `json:"generations"`
	// States counts members by the state of their latest report ("none":
	// never reported).
	States map[ReportState]int `json:"states"`
	// Current counts members whose latest report is healthy at the
	// generation core has for them now; Behind, those that report an
	// older generation or none.
	Current int `json:"current"`
	Behind  int `json:"behind"`
	// Held are members a rollout keeps at earlier data.
	Held int `json:"held"`
	// Stale have not reported for StaleAfterSeconds (or never did).
	Stale             int       `json:"stale"`
	StaleAfterSeconds int       `json:"staleAfterSeconds"`
	LastSeen          time.Time `json:"lastSeen,omitzero"`
	Revoked           int       `json:"revoked"`
	// Failed lists some members whose latest report is a failure.
	Failed []WaveFailure `json:"failed,omitempty"`
	// Rollout is the group's active rollout, if any.
	Rollout *Rollout `json:"rollout,omitempty"`
}

// Path variable of the rollout routes.
const VarRollout = "rollout"

// Rollout routes (admin).
var (
	RouteStartRollout  = Route{"start_rollout", http.MethodPost, "/v1/groups/{group}/rollouts", admin, versioned}
	RouteGroupRollouts = Route{"group_rollouts", http.MethodGet, "/v1/groups/{group}/rollouts", admin, unversioned}
	RouteFleet         = Route{"fleet", http.MethodGet, "/v1/groups/{group}/fleet", admin, unversioned}
	RouteRollout       = Route{"rollout", http.MethodGet, "/v1/rollouts/{rollout}", admin, unversioned}
	RoutePauseRollout  = Route{"pause_rollout", http.MethodPost, "/v1/rollouts/{rollout}/pause", admin, versioned}
	RouteResumeRollout = Route{"resume_rollout", http.MethodPost, "/v1/rollouts/{rollout}/resume", admin, versioned}
	RouteForceRollout  = Route{"force_rollout", http.MethodPost, "/v1/rollouts/{rollout}/force", admin, versioned}
	RouteAbortRollout  = Route{"abort_rollout", http.MethodPost, "/v1/rollouts/{rollout}/abort", admin, versioned}
)

// StartRollout starts a staged change of a group still at version.
func (c *Client) StartRollout(ctx context.Context, group string, version uint64, r RolloutRequest) (*Rollout, error) {
	var out Rollout
	_, err := c.do(ctx, RouteStartRollout, RouteStartRollout.URL(group), http.Header{"If-Match": {IfMatch(version)}}, r, &out)
	return &out, err
}

// GroupRollouts lists a group's rollouts.
func (c *Client) GroupRollouts(ctx context.Context, group string) (*RolloutList, error) {
	var out RolloutList
	_, err := c.do(ctx, RouteGroupRollouts, RouteGroupRollouts.URL(group), nil, nil, &out)
	return &out, err
}

// Rollout reads a rollout with its status.
func (c *Client) Rollout(ctx context.Context, id uint64) (*Rollout, error) {
	var out Rollout
	_, err := c.do(ctx, RouteRollout, RouteRollout.URL(strconv.FormatUint(id, 10)), nil, nil, &out)
	return &out, err
}

// RolloutAction pauses, resumes, forces or aborts a rollout still at rev
// (route is one of the four action routes).
func (c *Client) RolloutAction(ctx context.Context, route Route, id, rev uint64, reason string) (*Rollout, error) {
	var out Rollout
	_, err := c.do(ctx, route, route.URL(strconv.FormatUint(id, 10)), http.Header{"If-Match": {IfMatch(rev)}}, RolloutAction{Reason: reason}, &out)
	return &out, err
}

// Fleet is what a group's members run; staleAfter 0 is core's default.
func (c *Client) Fleet(ctx context.Context, group string, staleAfter time.Duration) (*Fleet, error) {
	var out Fleet
	path := RouteFleet.URL(group)
	if staleAfter > 0 {
		path += "?staleAfter=" + strconv.Itoa(int(staleAfter/time.Second))
	}
	_, err := c.do(ctx, RouteFleet, path, nil, nil, &out)
	return &out, err
}
