package state

import (
	"errors"
	"fmt"
	"io/fs"

	"github.com/fleetprov/prov/core/contract/coreapi"
)

// ReportFile is the device's latest report to core and whether core has
// it: one small file, replaced at every state the device reaches, so the
// daemon always sends the latest and never a backlog.
const ReportFile = "report.json"

// ReportRecord is the latest report and its delivery.
type ReportRecord struct {
	Report coreapi.Report `json:"report"`
	// Sent: core acknowledged it (or refused it for good: Refused says
	// why); nothing is left to send.
	Sent    bool   `json:"sent"`
	Refused string `json:"refused,omitempty"`
	// Tries counts failed attempts to send it; LastError is the last.
	Tries     int    `json:"tries,omitempty"`
	LastError string `json:"lastError,omitempty"`
}

// Pending says whether the report is still to be sent.
func (r *ReportRecord) Pending() bool { return r != nil && !r.Sent }

// LatestReport reads the latest report; nil if the device has made none.
func (d *Dir) LatestReport() (*ReportRecord, error) {
	var r ReportRecord
	if err := d.readJSON(ReportFile, &r); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, nil
		}
		return nil, err
	}
	return &r, nil
}

// sameReport says whether two reports tell core the same: the time aside.
func sameReport(a, b coreapi.Report) bool {
	a.At = b.At
	return a == b
}

// SetReport makes r the report to send, unless the one kept is about a
// newer generation (a report is about the newest generation the device
// tried: mounting an older one again after a fallback says nothing new)
// or says the same. It reports whether r replaced it.
func (d *Dir) SetReport(r coreapi.Report) (bool, error) {
	unlock, err := d.Lock()
	if err != nil {
		return false, err
	}
	defer unlock()
	old, err := d.LatestReport()
	if err == nil && old != nil && (old.Report.Generation > r.Generation || sameReport(old.Report, r)) {
		return false, nil
	}
	// A record that cannot be read is replaced.
	if err := d.writeJSON(ReportFile, ReportRecord{Report: r}, 0o644); err != nil {
		return false, fmt.Errorf("keep the report: %w", err)
	}
	return true, nil
}

// ReportDelivered records the outcome of sending r: delivered (err nil),
// refused for good (refused set), or failed for now (err set, tried
// again). It changes nothing if a newer report replaced r meanwhile.
func (d *Dir) ReportDelivered(r coreapi.Report, refused string, sendErr error) error {
	unlock, err := d.Lock()
	if err != nil {
		return err
	}
	defer unlock()
	rec, err := d.LatestReport()
	if err != nil || rec == nil || !sameReport(rec.Report, r) || !rec.Report.At.Equal(r.At) {
		return err
	}
	switch {
	case refused != "":
		rec.Sent, rec.Refused = true, refused
	case sendErr != nil:
		rec.Tries++
		rec.LastError = sendErr.Error()
	default:
		rec.Sent, rec.LastError = true, ""
	}
	return d.writeJSON(ReportFile, rec, 0o644)
}
