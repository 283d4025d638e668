package server_test

import (
	"encoding/json"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/fleetprov/prov/internal/httpapi"
	"github.com/fleetprov/prov/proxy/server"
	"github.com/fleetprov/prov/proxy/status"
)

// Warnings (the proxy's certificate near its end) are in a ready answer's
// body; they do not make the proxy unready.
func TestReadyzWarnings(t *testing.T) {
	var warnings []string
	s := server.New(&enroller{}, status.NewConsole(nil, nil), server.NewMetrics(), slog.New(slog.DiscardHandler), server.Options{
		Ready: func() error { return nil }, Timeout: time.Second, Warnings: func() []string { return warnings }})
	for _, w := range [][]string{nil, {"the tls certificate ends at 2026-12-01T00:00:00Z (in 9m0s); not renewed yet"}} {
		warnings = w
		rec, _ := do(t, s, "GET", "/readyz", "")
		var got httpapi.Readiness
		if err := json.Unmarshal(rec.Body.Bytes(), &got); err != nil || rec.Code != 200 || got.Status != "ready" ||
			strings.Join(got.Warnings, "|") != strings.Join(w, "|") {
			t.Errorf("readyz with warnings %q: %d %s", w, rec.Code, rec.Body.String())
		}
	}
}
