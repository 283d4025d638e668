package nspawn

import "errors"

// ErrNotRunning is what a Machine's methods wrap when they need the
// container running and it is not (powered off, killed, or it died).
var ErrNotRunning = errors.New("the machine is not running")

// ErrExitStatus is what Poweroff and Reboot wrap when systemd-nspawn ended
// with another status than the one the request should give (0 for a
// poweroff, 133 for a reboot).
var ErrExitStatus = errors.New("systemd-nspawn exited with an unexpected status")

// ErrNotUp is what Boot and Start wrap when systemd in the container did
// not reach "running" or "degraded".
var ErrNotUp = errors.New("the system did not come up")
