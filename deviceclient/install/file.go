package install

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"

	"github.com/CalebQ42/squashfs"

	"github.com/fleetprov/prov/core/contract/imagespec"
)

// ReadFile reads the file at path (absolute, as mounted over /, such as
// /etc/prov/data/health-check) from an installed image, without mounting
// it: ok is false if the image has no such file. The image was verified
// and inspected (Verify), so its files are within imagespec's limits.
func ReadFile(in *Installed, path string) (data []byte, ok bool, err error) {
	f, err := os.Open(in.Path)
	if err != nil {
		return nil, false, err
	}
	defer func() { _ = f.Close() }()
	rdr, err := squashfs.NewReader(io.NewSectionReader(f, in.Offset, in.Length))
	if err != nil {
		return nil, false, fmt.Errorf("%s: read the image: %w", in.Path, err)
	}
	sub, err := rdr.Open(strings.TrimPrefix(path, "/"))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("%s: %s: %w", in.Path, path, err)
	}
	defer func() { _ = sub.Close() }()
	data, err = io.ReadAll(io.LimitReader(sub, imagespec.MaxFileSize+1))
	if err != nil {
		return nil, false, fmt.Errorf("%s: %s: %w", in.Path, path, err)
	}
	if len(data) > imagespec.MaxFileSize {
		return nil, false, fmt.Errorf("%s: %s: larger than %d bytes", in.Path, path, imagespec.MaxFileSize)
	}
	return data, true, nil
}
