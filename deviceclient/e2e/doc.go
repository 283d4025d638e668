// Package e2e holds the whole-system tests (network_test.go): a device's
// life across a factory and a field network, with every real external part
// this machine has. It has no code of its own.
package e2e
