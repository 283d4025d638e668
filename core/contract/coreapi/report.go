package coreapi

import (
	"context"
	"fmt"
	"time"
)

// ReportState is how far a device got with a generation.
type ReportState string

// The states a device reports, in the order it reaches them. Failed ends
// a generation the device will not run: it refused it, its health check
// failed or timed out, or the device rebooted before the check passed;
// the device runs Running (its previous generation) instead and never
// mounts the failed one again, unless core sends a newer one.
const (
	StateVerified  ReportState = "verified"  // downloaded, signature and contents verified
	StateInstalled ReportState = "installed" // made current in the state directory
	StateMounted   ReportState = "mounted"   // mounted over /etc; health check not passed yet
	StateHealthy   ReportState = "healthy"   // mounted, and the health check passed (or none is configured)
	StateFailed    ReportState = "failed"    // refused or failed its health check: see Error
)

// ReportStates are the states, in order.
var ReportStates = []ReportState{StateVerified, StateInstalled, StateMounted, StateHealthy, StateFailed}

// Valid says whether s is a state of the contract.
func (s ReportState) Valid() bool {
	for _, x := range ReportStates {
		if s == x {
			return true
		}
	}
	return false
}

// Bounds of a report: core refuses a longer one (400), so the device
// truncates the health check's output itself.
const (
	MaxReportError  = 4096
	MaxReportBootID = 64
	MaxReportBody   = 16 << 10
)

// Report is what a device tells core of the newest generation it has
// tried (POST /v1/devices/{serial}/report, the device's own serial only).
// A device sends its latest state, not a backlog: each report replaces
// the one before, and sending the same report again changes nothing.
type Report struct {
	// Generation is the generation the report is about.
	Generation uint64      `json:"generation"`
	State      ReportState `json:"state"`
	// Running is the generation mounted now: Generation once it is
	// mounted, the previous one after a failure (0 if none is mounted).
	Running uint64 `json:"running"`
	// BootID is the kernel's boot ID (/proc/sys/kernel/random/boot_id):
	// a report after a reboot is told from a retry.
	BootID string `json:"bootId"`
	// At is when the device reached the state, by its clock.
	At time.Time `json:"at"`
	// Error says why a generation failed: the refusal, or the health
	// check's exit status and the end of its output.
	Error string `json:"error,omitempty"`
}

// Check says what is wrong with a report, naming the field.
func (r *Report) Check() error {
	switch {
	case r.Generation == 0:
		return fmt.Errorf("generation: want the generation the report is about (1 or more)")
	case !r.State.Valid():
		return fmt.Errorf("state: want one of %v", ReportStates)
	case r.Running > r.Generation:
		return fmt.Errorf("running: generation %d is newer than the reported %d", r.Running, r.Generation)
	case (r.State == StateMounted || r.State == StateHealthy) && r.Running != r.Generation:
		return fmt.Errorf("running: a %s generation is the one running", r.State)
	case len(r.BootID) > MaxReportBootID:
		return fmt.Errorf("bootId: longer than %d bytes", MaxReportBootID)
	case len(r.Error) > MaxReportError:
		return fmt.Errorf("error: longer than %d bytes", MaxReportError)
	case r.At.IsZero():
		return fmt.Errorf("at: want the time the device reached the state")
	}
	return nil
}

// DeviceReport is a device's latest report as core keeps it: core's
// answer to a report, and part of an admin's view of the device.
type DeviceReport struct {
	Report
	// Received is when core stored it, by core's clock: what "last
	// seen" and staleness are measured by.
	Received time.Time `json:"received"`
}

// Report sends a device's latest state (device).
func (c *Client) Report(ctx context.Context, serial string, r Report) (*DeviceReport, error) {
	var out DeviceReport
	_, err := c.do(ctx, RouteReport, RouteReport.URL(serial), nil, r, &out)
	return &out, err
}
