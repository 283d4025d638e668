package agent

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"strings"
	"time"

	"github.com/fleetprov/prov/core/contract/coreapi"
)

// record keeps r as the latest report (state.Dir.SetReport), stamped with
// the boot ID and the time, its error made fit for the contract. Keeping
// it must not stop the device: a failure is logged.
func (a *Agent) record(r coreapi.Report) {
	r.At = a.now().UTC().Truncate(time.Millisecond)
	if boot, err := a.bootID(); err == nil && len(boot) <= coreapi.MaxReportBootID {
		r.BootID = boot
	}
	r.Error = fitError(r.Error)
	if err := r.Check(); err != nil {
		a.log.Error("report not kept", "report", r, "err", err)
		return
	}
	if _, err := a.st.SetReport(r); err != nil {
		a.log.Warn("report not kept", "state", r.State, "generation", r.Generation, "err", err)
	}
}

// fitError makes an error fit coreapi.MaxReportError bytes of valid
// UTF-8 (JSON would turn each invalid byte into three), keeping its start
// (what failed) and its end (the end of the check's output).
func fitError(s string) string {
	s = strings.ToValidUTF8(s, "?")
	if len(s) <= coreapi.MaxReportError {
		return s
	}
	const cut = " [...] "
	head := coreapi.MaxReportError / 4
	tailLen := coreapi.MaxReportError - head - len(cut)
	for head > 0 && !isRuneStart(s[head]) {
		head--
	}
	start := len(s) - tailLen
	for start < len(s) && !isRuneStart(s[start]) {
		start++
	}
	return s[:head] + cut + s[start:]
}

func isRuneStart(b byte) bool { return b&0xc0 != 0x80 }

// SendReport sends the latest report to core if core does not have it
// yet, and records the outcome: sent (true), refused by core for good (a
// 4xx other than 429: logged and dropped, sending it again cannot help),
// or failed for now (the error; the report stays pending).
func (a *Agent) SendReport(ctx context.Context) (bool, error) {
	rec, err := a.st.LatestReport()
	if err != nil || !rec.Pending() {
		return false, err
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	_, err = a.core.Report(ctx, a.dev.Serial, rec.Report)
	var se *coreapi.StatusError
	if errors.As(err, &se) && se.Status >= 400 && se.Status < 500 && se.Status != http.StatusTooManyRequests {
		a.log.Error("core refused the report; dropped", "generation", rec.Report.Generation, "state", rec.Report.State, "err", err)
		return false, a.st.ReportDelivered(rec.Report, err.Error(), nil)
	}
	if err != nil {
		err = fmt.Errorf("report %s of generation %d to %s: %w", rec.Report.State, rec.Report.Generation, a.dev.CoreURL, err)
		return false, errors.Join(err, a.st.ReportDelivered(rec.Report, "", err))
	}
	a.log.Info("reported", "generation", rec.Report.Generation, "state", rec.Report.State, "running", rec.Report.Running)
	return true, a.st.ReportDelivered(rec.Report, "", nil)
}

// DefaultReportEvery is how often a quiet daemon reports again.
const DefaultReportEvery = 12 * time.Hour

// Heartbeat sends the latest report again, if core already has it: core
// changes nothing but when it last heard of the device. A pending report
// is SendReport's; a failure is only logged (the next one will do).
func (a *Agent) Heartbeat(ctx context.Context) {
	rec, err := a.st.LatestReport()
	if err != nil || rec == nil || !rec.Sent || rec.Refused != "" {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if _, err := a.core.Report(ctx, a.dev.Serial, rec.Report); err != nil {
		a.log.Warn("report again: not sent", "err", err)
	}
}

// reporter is the daemon's side of SendReport: it sends the pending
// report at once when it changes, and after a failure again with a
// jittered back-off that doubles up to a cap; always the latest report.
type reporter struct {
	min, cap time.Duration
	backoff  time.Duration
	next     time.Time
	last     coreapi.Report // the pending report the back-off is for
}

// due says whether to send now the report pending (nil: none).
func (r *reporter) due(pending *coreapi.Report, now time.Time) bool {
	if pending == nil {
		return false
	}
	if *pending != r.last {
		r.last, r.backoff, r.next = *pending, 0, time.Time{}
	}
	return !now.Before(r.next)
}

// failed schedules the next try.
func (r *reporter) failed(now time.Time) time.Duration {
	r.backoff = min(max(2*r.backoff, r.min), r.cap)
	d := r.backoff - time.Duration(rand.Int64N(int64(r.backoff/4)+1)) //nolint:gosec // jitter, not a secret
	r.next = now.Add(d)
	return d
}
