// Command prov-proxy is the factory proxy: it vouches for brand-new devices
// on the factory network and enrolls them with step-ca and core.
//
// Not built yet (issue "Factory proxy"): it prints its usage and exits 2.
package main

import (
	"fmt"
	"os"
)

func main() {
	fmt.Fprint(os.Stderr, `prov-proxy: the factory enrollment proxy

usage:
  prov-proxy serve --config FILE    (not implemented yet)
  prov-proxy audit verify|list ...  (not implemented yet)

This binary does nothing yet; see the README for what exists.
`)
	os.Exit(2)
}
