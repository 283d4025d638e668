// Command prov-core is the provisioning service: device registry, image
// build and signing, mTLS API, MQTT notifications. Today it has the offline
// image tool; the service arrives with its issue.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/fleetprov/prov/core/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := cli.Main(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
