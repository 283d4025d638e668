package server

import (
	"embed"
	"encoding/json"
	"fmt"
	"net/http"
	"time"

	"github.com/fleetprov/prov/core/contract/coreapi"
	"github.com/fleetprov/prov/internal/httpapi"
	"github.com/fleetprov/prov/proxy/batchreport"
	"github.com/fleetprov/prov/proxy/contract/enrollapi"
)

// The console's page, script and style: files of their own, embedded, so
// the page loads nothing from elsewhere (a line may have no internet) and
// its Content-Security-Policy allows no inline code: a device-controlled
// string that became markup could not run.
//
//go:embed console/console.html console/console.js console/console.css
var consoleFiles embed.FS

// consolePolicy is the page's Content-Security-Policy: its own script,
// style and connections (state, events, report), nothing else.
const consolePolicy = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; " +
	"base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

// consoleHandlers are the console's routes, each for the factory network
// only (viewersOnly).
func (s *Server) consoleHandlers() map[string]httpapi.HandlerFunc {
	return map[string]httpapi.HandlerFunc{
		enrollapi.RouteStatusPage.Name:    s.viewersOnly(s.consoleFile("console/console.html", "text/html; charset=utf-8")),
		enrollapi.RouteConsoleScript.Name: s.viewersOnly(s.consoleFile("console/console.js", "text/javascript; charset=utf-8")),
		enrollapi.RouteConsoleStyle.Name:  s.viewersOnly(s.consoleFile("console/console.css", "text/css; charset=utf-8")),
		enrollapi.RouteConsoleState.Name:  s.viewersOnly(s.consoleState),
		enrollapi.RouteConsoleEvents.Name: s.viewersOnly(s.consoleEvents),
		enrollapi.RouteConsoleReport.Name: s.viewersOnly(s.consoleReport),
	}
}

// consoleFile serves one of the console's files.
func (s *Server) consoleFile(name, contentType string) httpapi.HandlerFunc {
	data, err := consoleFiles.ReadFile(name)
	if err != nil {
		panic(err) // embedded above: cannot happen
	}
	return func(w http.ResponseWriter, r *http.Request) error {
		h := w.Header()
		h.Set("Content-Type", contentType)
		h.Set("Content-Security-Policy", consolePolicy)
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("Cache-Control", "no-cache")
		if r.Method == http.MethodHead {
			return nil
		}
		_, _ = w.Write(data)
		return nil
	}
}

// ssePing is how often an idle event stream says it is alive, so that a
// proxy in between or the browser does not time it out.
const ssePing = 15 * time.Second

// consoleState is the console's whole content now.
func (s *Server) consoleState(w http.ResponseWriter, _ *http.Request) error {
	w.Header().Set("Cache-Control", "no-store")
	return httpapi.WriteJSON(w, http.StatusOK, s.con.State(time.Now()))
}

// consoleEvents streams each attempt as the factory record gets it
// (server-sent events, event "attempt", data its JSON). A console that
// falls behind is dropped by the feed: its stream ends, and the browser
// reconnects (retry) and reloads the state, which is exact.
func (s *Server) consoleEvents(w http.ResponseWriter, r *http.Request) error {
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Accel-Buffering", "no")
	if r.Method == http.MethodHead {
		w.WriteHeader(http.StatusOK)
		return nil
	}
	rc := http.NewResponseController(w)
	// The stream outlives the server's write timeout, by design.
	if err := rc.SetWriteDeadline(time.Time{}); err != nil {
		return fmt.Errorf("event stream: %w", err)
	}
	sub := s.con.Feed.Subscribe()
	defer s.con.Feed.Unsubscribe(sub)
	w.WriteHeader(http.StatusOK)
	if _, err := fmt.Fprint(w, "retry: 2000\n: attempts as they are recorded\n\n"); err != nil {
		return nil //nolint:nilerr // the console went away
	}
	if err := rc.Flush(); err != nil {
		return nil //nolint:nilerr // the console went away
	}
	ping := time.NewTicker(ssePing)
	defer ping.Stop()
	for {
		var chunk string
		select {
		case <-r.Context().Done():
			return nil
		case rec, ok := <-sub.C:
			if !ok {
				return nil // dropped: it reconnects and reloads
			}
			data, err := json.Marshal(s.con.Attempt(rec))
			if err != nil {
				return nil //nolint:nilerr // cannot happen for a record
			}
			chunk = fmt.Sprintf("id: %d\nevent: attempt\ndata: %s\n\n", rec.Seq, data)
		case <-ping.C:
			chunk = ": ping\n\n"
		}
		if _, err := fmt.Fprint(w, chunk); err != nil {
			return nil //nolint:nilerr // the console went away
		}
		if err := rc.Flush(); err != nil {
			return nil //nolint:nilerr // the console went away
		}
	}
}

// consoleReport exports a batch's signed report: a zip of the report file,
// its detached signature and the proxy's chain, as `prov-proxy audit
// report` writes them, for `prov-proxy audit verify-report` or openssl.
func (s *Server) consoleReport(w http.ResponseWriter, r *http.Request) error {
	if s.o.Report == nil {
		return httpapi.NewError(http.StatusNotFound, coreapi.CodeNotFound, "this proxy exports no reports", nil)
	}
	q := r.URL.Query()
	batch := q.Get("batch")
	if batch == "" {
		return httpapi.BadRequest("batch: missing (?batch=NAME&format=csv|json)", nil)
	}
	format, err := batchreport.ParseFormat(q.Get("format"))
	if err != nil {
		return httpapi.BadRequest("format: "+err.Error(), nil)
	}
	name, data, err := s.o.Report(batch, format)
	if err != nil {
		return err
	}
	h := w.Header()
	h.Set("Content-Type", "application/zip")
	h.Set("Content-Disposition", fmt.Sprintf("attachment; filename=%q", name))
	h.Set("Cache-Control", "no-store")
	if r.Method == http.MethodHead {
		return nil
	}
	_, _ = w.Write(data)
	return nil
}
