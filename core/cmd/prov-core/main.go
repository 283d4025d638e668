// Command prov-core is the provisioning service: device registry, image
// build and signing, mTLS API, MQTT notifications.
//
// Not built yet (issue "Core service"): it prints its usage and exits 2.
package main

import (
	"fmt"
	"os"
)

func main() {
	fmt.Fprint(os.Stderr, `prov-core: the provisioning service (registry, signed images, mTLS API, MQTT)

usage:
  prov-core serve --config FILE     (not implemented yet)
  prov-core image build ...         (not implemented yet)
  prov-core admin ...               (not implemented yet)

This binary does nothing yet; see the README for what exists.
`)
	os.Exit(2)
}
