package mount

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// attachLoop attaches the byte range [offset, offset+size) of file to a
// free loop device, read-only and auto-clearing (the device frees itself
// when the last mount of it goes), and returns the device's path and an
// open descriptor that the caller closes once the device is mounted.
//
// The range is the image inside the bundle file: the kernel reads exactly
// the bytes that were verified, from the file that holds the signature.
func attachLoop(file string, offset, size int64) (string, *os.File, error) {
	backing, err := os.Open(file) //nolint:gosec // our state directory
	if err != nil {
		return "", nil, err
	}
	defer func() { _ = backing.Close() }() // the loop device holds its own reference
	ctl, err := os.OpenFile("/dev/loop-control", os.O_RDWR, 0)
	if err != nil {
		return "", nil, fmt.Errorf("loop: %w", err)
	}
	defer func() { _ = ctl.Close() }()
	for range 16 { // another process may take the free device first
		n, err := unix.IoctlRetInt(int(ctl.Fd()), unix.LOOP_CTL_GET_FREE) //nolint:gosec // fd fits
		if err != nil {
			return "", nil, fmt.Errorf("loop: no free device: %w", err)
		}
		path := fmt.Sprintf("/dev/loop%d", n)
		dev, err := os.OpenFile(path, os.O_RDONLY, 0)
		if err != nil {
			return "", nil, fmt.Errorf("loop: %w", err)
		}
		cfg := unix.LoopConfig{Fd: uint32(backing.Fd())} //nolint:gosec // fd fits
		cfg.Info.Offset = uint64(offset)                 //nolint:gosec // checked by the caller
		cfg.Info.Sizelimit = uint64(size)                //nolint:gosec // checked by the caller
		cfg.Info.Flags = unix.LO_FLAGS_READ_ONLY | unix.LO_FLAGS_AUTOCLEAR
		err = unix.IoctlLoopConfigure(int(dev.Fd()), &cfg) //nolint:gosec // fd fits
		if errors.Is(err, unix.ENOTTY) || errors.Is(err, unix.EINVAL) {
			err = setFD(dev, backing, cfg.Info) // kernels before 5.8
		}
		if errors.Is(err, unix.EBUSY) {
			_ = dev.Close()
			continue
		}
		if err != nil {
			_ = dev.Close()
			return "", nil, fmt.Errorf("loop %s: %w", path, err)
		}
		return path, dev, nil
	}
	return "", nil, errors.New("loop: every free device was taken by another process")
}

func setFD(dev, backing *os.File, info unix.LoopInfo64) error {
	if err := unix.IoctlSetInt(int(dev.Fd()), unix.LOOP_SET_FD, int(backing.Fd())); err != nil { //nolint:gosec // fds fit
		return err
	}
	if err := unix.IoctlLoopSetStatus64(int(dev.Fd()), &info); err != nil { //nolint:gosec // fd fits
		_ = unix.IoctlSetInt(int(dev.Fd()), unix.LOOP_CLR_FD, 0) //nolint:gosec // fd fits
		return err
	}
	return nil
}
