// Command prov-device is the device client: enroll through the factory
// proxy, fetch, verify and install signed provisioning images, mount them
// over /etc, renew the certificate and follow MQTT notifications; and the
// offline bundle checks (verify, inspect).
//
// It must stay small: it may not link step-ca, gorilla/mux or bbolt (see
// deps_test.go).
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/fleetprov/prov/deviceclient/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := cli.Main(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
