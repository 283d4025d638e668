package pki

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
)

// ErrBadPasswordFile: the password file is missing, empty or too large.
var ErrBadPasswordFile = errors.New("bad password file")

// ReadPasswordFile reads a key password from a file, as step-ca's
// --password-file does: the whole file with trailing white space removed.
func ReadPasswordFile(path string) ([]byte, error) {
	if path == "" {
		return nil, fmt.Errorf("%w: no password file given", ErrBadPasswordFile)
	}
	f, err := os.Open(path) //nolint:gosec // the operator names the file
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadPasswordFile, err)
	}
	defer func() { _ = f.Close() }()
	const maxLen = 4096
	data, err := io.ReadAll(io.LimitReader(f, maxLen+1))
	if err != nil {
		return nil, fmt.Errorf("%w: read %s: %w", ErrBadPasswordFile, path, err)
	}
	if len(data) > maxLen {
		return nil, fmt.Errorf("%w: %s is longer than %d bytes", ErrBadPasswordFile, path, maxLen)
	}
	pw := bytes.TrimRight(data, " \t\r\n")
	if len(pw) == 0 {
		return nil, fmt.Errorf("%w: %s is empty", ErrBadPasswordFile, path)
	}
	return pw, nil
}
