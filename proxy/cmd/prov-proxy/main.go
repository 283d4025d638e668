// Command prov-proxy is the factory proxy: it vouches for brand-new devices
// on the factory network and enrolls them with step-ca and core, and keeps
// the factory record.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/fleetprov/prov/proxy/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := cli.Main(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
