package server

import (
	"encoding/json"
	"fmt"
	"net/http"
	"time"

	"github.com/fleetprov/prov/core/contract/coreapi"
	"github.com/fleetprov/prov/internal/httpapi"
	"github.com/fleetprov/prov/proxy/status"
)

// ssePing is how often an idle event stream says it is alive, so that a
// proxy in between or the browser does not time it out.
const ssePing = 15 * time.Second

// consoleState is the console's whole content now.
func (s *Server) consoleState(w http.ResponseWriter, _ *http.Request) error {
	if s.o.Console == nil {
		return httpapi.NewError(http.StatusNotFound, coreapi.CodeNotFound, "this proxy has no console", nil)
	}
	w.Header().Set("Cache-Control", "no-store")
	return httpapi.WriteJSON(w, http.StatusOK, s.o.Console.State(time.Now()))
}

// consoleEvents streams each attempt as the factory record gets it
// (server-sent events, event "attempt", data its JSON). A console that
// falls behind is dropped by the feed: its stream ends, and the browser
// reconnects (retry) and reloads the state, which is exact.
func (s *Server) consoleEvents(w http.ResponseWriter, r *http.Request) error {
	if s.o.Console == nil {
		return httpapi.NewError(http.StatusNotFound, coreapi.CodeNotFound, "this proxy has no console", nil)
	}
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
	sub := s.o.Console.Feed.Subscribe()
	defer s.o.Console.Feed.Unsubscribe(sub)
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
			data, err := json.Marshal(status.AttemptOf(rec))
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
