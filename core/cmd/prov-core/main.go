// Command prov-core is the provisioning service (serve): device registry,
// image build and signing, mTLS API, MQTT notifications; its admin client
// (admin) and the offline image tool (image build).
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
