// Package hwinfo reads what a board says about itself: its type (from the
// devicetree model) and its raw hardware ID (the Raspberry Pi's
// /proc/cpuinfo Serial, a BeagleBone's devicetree serial-number), and
// checks it with the serial rule's own validation (core/contract/hwid). Every
// source can be overridden, for tests and for boards whose firmware hides
// the usual files.
package hwinfo

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/fleetprov/prov/core/contract/hwid"
)

// Sources says where to read from; empty fields mean the board's own files.
type Sources struct {
	CPUInfo string // default /proc/cpuinfo
	DTRoot  string // default /sys/firmware/devicetree/base (or /proc/device-tree)
	Board   string // skip detection: rpi4, bbb or bbai
	HWID    string // skip reading: the raw ID
}

// ErrUnknownBoard is a devicetree model this client does not know.
var ErrUnknownBoard = errors.New("unknown board")

// maxFile bounds what is read from cpuinfo and devicetree files.
const maxFile = 64 << 10

// models maps a devicetree model's prefix to a board type.
var models = []struct{ prefix, board string }{
	{"Raspberry Pi 4", "rpi4"},
	{"Raspberry Pi Compute Module 4", "rpi4"},
	{"TI AM335x BeagleBone Black", "bbb"},
	{"TI AM335x BeagleBone Green", "bbb"}, // same SoC and EEPROM layout
	{"BeagleBoard.org BeagleBone AI", "bbai"},
}

// Read returns the board's validated hardware ID.
func Read(s Sources) (hwid.ID, error) {
	if s.DTRoot == "" {
		s.DTRoot = "/sys/firmware/devicetree/base"
		if _, err := os.Stat(s.DTRoot); err != nil {
			s.DTRoot = "/proc/device-tree"
		}
	}
	if s.CPUInfo == "" {
		s.CPUInfo = "/proc/cpuinfo"
	}
	board := s.Board
	if board == "" {
		model, err := readString(filepath.Join(s.DTRoot, "model"))
		if err != nil {
			return hwid.ID{}, fmt.Errorf("board type: %w (or give --board)", err)
		}
		if board = boardOf(model); board == "" {
			return hwid.ID{}, fmt.Errorf("%w: devicetree model %q (give --board %s)", ErrUnknownBoard, model, strings.Join(hwid.BoardNames(), "|"))
		}
	}
	raw := s.HWID
	if raw == "" {
		var err error
		if raw, err = readRaw(board, s); err != nil {
			return hwid.ID{}, err
		}
	}
	return hwid.Parse(board, raw)
}

func boardOf(model string) string {
	for _, m := range models {
		if strings.HasPrefix(model, m.prefix) {
			return m.board
		}
	}
	return ""
}

// readRaw reads the raw ID where the board keeps it. A Raspberry Pi's
// cpuinfo Serial comes from the SoC's OTP; a BeagleBone's serial-number
// from its EEPROM, which the bootloader copies into the devicetree.
func readRaw(board string, s Sources) (string, error) {
	dtSerial := filepath.Join(s.DTRoot, "serial-number")
	if board == "rpi4" {
		serial, err := cpuinfoSerial(s.CPUInfo)
		if err == nil {
			return serial, nil
		}
		if v, dtErr := readString(dtSerial); dtErr == nil {
			return v, nil
		}
		return "", fmt.Errorf("hardware ID: %w", err)
	}
	v, err := readString(dtSerial)
	if err != nil {
		return "", fmt.Errorf("hardware ID: %w", err)
	}
	return v, nil
}

// cpuinfoSerial finds the "Serial : ..." line.
func cpuinfoSerial(path string) (string, error) {
	data, err := readLimited(path)
	if err != nil {
		return "", err
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if ok && strings.TrimSpace(k) == "Serial" {
			return strings.TrimSpace(v), nil
		}
	}
	return "", fmt.Errorf("%s has no Serial line", path)
}

// readString reads a devicetree string property: its bytes up to the NUL
// that ends it (hwid.Parse accepts one trailing NUL, so it is kept for
// the serial; the model is trimmed).
func readString(path string) (string, error) {
	data, err := readLimited(path)
	if err != nil {
		return "", err
	}
	if filepath.Base(path) == "model" {
		return strings.TrimRight(string(data), "\x00\n"), nil
	}
	return string(data), nil
}

func readLimited(path string) ([]byte, error) {
	f, err := os.Open(path) //nolint:gosec // fixed system files or the operator's override
	if err != nil {
		return nil, err
	}
	defer func() { _ = f.Close() }()
	data, err := io.ReadAll(io.LimitReader(f, maxFile+1))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if len(data) > maxFile {
		return nil, fmt.Errorf("%s: larger than %d bytes", path, maxFile)
	}
	return data, nil
}
