package pkitest

import (
	"crypto/tls"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
)

// Recorder is a TLS server holding a certificate it was given (one of a
// deployment's, say) that answers every request as a healthy step-ca would
// ({"status":"ok"}) and counts what reached it: the server a test puts in
// the place of step-ca or core to see whether a client talks to it.
type Recorder struct {
	// URL names the host localhost, as the deployment's certificates do;
	// Addr is the listener's 127.0.0.1:port.
	URL, Addr string
	// Requests counts the requests that reached the handler, Tokens those
	// to step-ca's /1.0/sign (each carries a one-time token).
	Requests, Tokens atomic.Int64
}

// NewRecorder starts a Recorder until the test ends.
func NewRecorder(t testing.TB, cert tls.Certificate) *Recorder {
	t.Helper()
	rec := &Recorder{}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec.Requests.Add(1)
		if r.URL.Path == "/1.0/sign" {
			rec.Tokens.Add(1)
		}
		_, _ = w.Write([]byte(`{"status":"ok"}`))
	}))
	srv.TLS = &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{cert}}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	rec.URL, rec.Addr = strings.Replace(srv.URL, "127.0.0.1", "localhost", 1), srv.Listener.Addr().String()
	return rec
}
