package mqtt_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"log/slog"
	"net"
	"testing"
	"time"

	"github.com/fleetprov/prov/core/mqtt"
	"github.com/fleetprov/prov/internal/testenv"
	"github.com/fleetprov/prov/pki/pkitest"
)

// Asked for port 0, the broker binds a free port at once and reports it:
// the port is held from NewBroker on, and it serves there.
func TestBrokerReportsTheBoundPort(t *testing.T) {
	ca := pkitest.NewCA(t, "fleet.test")
	roots := x509.NewCertPool()
	roots.AddCert(ca.Root)
	tlsCfg := &tls.Config{
		Certificates: []tls.Certificate{ca.TLSCert(t, pkitest.LeafSpec{URIs: []string{"spiffe://fleet.test/core/core"}, DNS: []string{"localhost"}})},
		ClientAuth:   tls.RequireAndVerifyClientCert, ClientCAs: roots, MinVersion: tls.VersionTLS13,
	}
	b, err := mqtt.NewBroker("127.0.0.1:0", tlsCfg, nil, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	host, port, err := net.SplitHostPort(b.Addr())
	if err != nil || host != "127.0.0.1" || port == "0" {
		t.Fatalf("Addr %q (%v): want 127.0.0.1 and the bound port", b.Addr(), err)
	}
	// Bound before Run: nobody else can take the port. (Not a connection
	// made before Run: mochi then reads it concurrently with its Close,
	// which the race detector reports inside mochi.)
	if ln, err := net.Listen("tcp", b.Addr()); err == nil {
		_ = ln.Close()
		t.Fatalf("%s is free before Run; the broker must hold it from NewBroker on", b.Addr())
	}

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- b.Run(ctx) }()
	if err := testenv.WaitFor(10*time.Second, b.Ready); err != nil {
		cancel()
		t.Fatal(err)
	}
	if b.Addr() != net.JoinHostPort(host, port) {
		t.Fatalf("Addr changed from %s:%s to %s", host, port, b.Addr())
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
}
