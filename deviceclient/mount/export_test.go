package mount

// SetBeforeMove sets the hook run before every move onto the target, and
// returns a function that restores the default.
func SetBeforeMove(f func()) (restore func()) {
	beforeMove = f
	return func() { beforeMove = func() {} }
}
