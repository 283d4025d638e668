package coreapi

import (
	"context"
	"net/http"
	"time"
)

// RouteAuditPrune prunes core's audit trail to a date (admin).
var RouteAuditPrune = Route{"audit_prune", http.MethodPost, "/v1/audit/prune", admin, unversioned}

// CodePruneRunning: another prune of the audit trail is running (on this
// core, or on another core of its database); 409.
const CodePruneRunning ErrorCode = "prune_running"

// AuditPrune asks core to remove audit events before Before, which must
// not be in the future. Of each device's and group's events before it,
// the newest of each action stays, and one summary event says what was
// removed (docs/operations.md, "Audit retention").
type AuditPrune struct {
	Before time.Time `json:"before"`
}

// AuditPruneResult is what a prune removed.
type AuditPruneResult struct {
	Before time.Time `json:"before"`
	// Subjects is how many devices and groups lost events; each has one
	// summary event for them.
	Subjects int `json:"subjects"`
	// Events is how many events were removed, Actions how many of each
	// action.
	Events  int            `json:"events"`
	Actions map[string]int `json:"actions,omitempty"`
}

// PruneAudit prunes core's audit trail to before (admin).
func (c *Client) PruneAudit(ctx context.Context, before time.Time) (*AuditPruneResult, error) {
	var out AuditPruneResult
	_, err := c.do(ctx, RouteAuditPrune, RouteAuditPrune.URL(), nil, AuditPrune{Before: before}, &out)
	return &out, err
}
