// Command prov-device is the device client: enroll through the factory
// proxy, fetch, verify and install signed provisioning images, mount them
// over /etc, renew the certificate and follow MQTT notifications.
//
// Not built yet (issue "Device client"): it prints its usage and exits 2.
// It must stay small: it may not link step-ca, gorilla/mux or bbolt (see
// deps_test.go).
package main

import (
	"fmt"
	"os"
)

func main() {
	fmt.Fprint(os.Stderr, `prov-device: the device provisioning client

usage:
  prov-device enroll|update|mount|unmount|run|status|verify|inspect ...   (not implemented yet)

This binary does nothing yet; see the README for what exists.
`)
	os.Exit(2)
}
