package serve

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"

	"golang.org/x/net/netutil"
)

// Listen returns ln if a test gave one, else a TCP listener on addr.
func Listen(addr string, ln net.Listener) (net.Listener, error) {
	if ln != nil {
		return ln, nil
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", addr, err)
	}
	return ln, nil
}

// HTTPS serves h over TLS on ln with the limits of c until ctx ends, then
// stops accepting and gives requests in flight c.ShutdownTimeout to finish.
// It owns ln.
func HTTPS(ctx context.Context, ln net.Listener, h http.Handler, tlsCfg *tls.Config, c HTTPConfig, log *slog.Logger) error {
	srv := &http.Server{
		Handler:           h,
		TLSConfig:         tlsCfg,
		ReadHeaderTimeout: c.ReadHeaderTimeout,
		ReadTimeout:       c.ReadTimeout,
		WriteTimeout:      c.WriteTimeout,
		IdleTimeout:       c.IdleTimeout,
		MaxHeaderBytes:    c.MaxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
	served := make(chan error, 1)
	go func() { served <- srv.ServeTLS(netutil.LimitListener(ln, c.MaxConnections), "", "") }()
	select {
	case err := <-served:
		return fmt.Errorf("serve %s: %w", ln.Addr(), err)
	case <-ctx.Done():
	}
	// Shutdown gets its own context: the parent one has ended.
	sctx, cancel := context.WithTimeout(context.Background(), c.ShutdownTimeout)
	defer cancel()
	err := srv.Shutdown(sctx)
	if serr := <-served; !errors.Is(serr, http.ErrServerClosed) {
		return fmt.Errorf("serve %s: %w", ln.Addr(), serr)
	}
	if err != nil {
		return fmt.Errorf("shut down %s: %w", ln.Addr(), err)
	}
	return nil
}

// Compose is the shape of a composition root: build the service with its
// named constructors in order, stopping at the first that fails, run it
// until ctx ends, and close what was opened whatever happened (a close
// error is returned if nothing failed before it).
func Compose(ctx context.Context, build []func() error, run func(context.Context) error, close func() error) (err error) {
	defer func() {
		if cerr := close(); cerr != nil && err == nil {
			err = cerr
		}
	}()
	for _, step := range build {
		if err := step(); err != nil {
			return err
		}
	}
	return run(ctx)
}
