// Package layout holds the module's rules about itself, as tests: every
// package says what it is for, the README's map names every package, and
// every contract package says which binaries link it (checked against what
// they really link). It has no code of its own.
package layout
