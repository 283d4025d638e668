// Command prov-pki is the security admin's tool for a deployment's PKI:
// create it (init), run its step-ca (ca), issue service certificates (issue)
// and revoke certificates (revoke). See the README's section for admins.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/fleetprov/prov/pki/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := cli.Main(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
