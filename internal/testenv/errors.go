package testenv

import "errors"

// ErrTimedOut is what WaitFor's error wraps when the condition did not hold
// in time (beside the condition's last error).
var ErrTimedOut = errors.New("timed out")

// ErrPortsTaken is what StartOnFreePort's error wraps when every port it
// tried was taken before the server could bind it.
var ErrPortsTaken = errors.New("every port tried was taken")
