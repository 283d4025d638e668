package hwinfo_test

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/fleetprov/prov/core/contract/hwid"
	"github.com/fleetprov/prov/deviceclient/hwinfo"
)

func board(t *testing.T, model, serial, cpuinfo string) hwinfo.Sources {
	t.Helper()
	dir := t.TempDir()
	dt := filepath.Join(dir, "dt")
	if err := os.MkdirAll(dt, 0o755); err != nil {
		t.Fatal(err)
	}
	write := func(p, s string) {
		if s == "" {
			return
		}
		if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(filepath.Join(dt, "model"), model)
	write(filepath.Join(dt, "serial-number"), serial)
	write(filepath.Join(dir, "cpuinfo"), cpuinfo)
	return hwinfo.Sources{DTRoot: dt, CPUInfo: filepath.Join(dir, "cpuinfo")}
}

const rpiCPUInfo = "processor\t: 0\nBogoMIPS\t: 108.00\n\nHardware\t: BCM2835\nRevision\t: c03114\nSerial\t\t: 10000000abcdef12\nModel\t\t: Raspberry Pi 4 Model B Rev 1.4\n"

func TestBoards(t *testing.T) {
	for _, tc := range []struct {
		name  string
		src   hwinfo.Sources
		board string
		id    string
	}{
		{"raspberry pi 4 from cpuinfo", board(t, "Raspberry Pi 4 Model B Rev 1.4\x00", "", rpiCPUInfo), "rpi4", "10000000abcdef12"},
		{"raspberry pi 4 from the devicetree", board(t, "Raspberry Pi 4 Model B Rev 1.4\x00", "10000000abcdef12\x00", ""), "rpi4", "10000000abcdef12"},
		{"beaglebone black", board(t, "TI AM335x BeagleBone Black\x00", "1813BBBK0123\x00", ""), "bbb", "1813BBBK0123"},
		{"beaglebone ai", board(t, "BeagleBoard.org BeagleBone AI\x00", "1934BBAI0042\x00", ""), "bbai", "1934BBAI0042"},
		{"overrides", hwinfo.Sources{Board: "bbb", HWID: "1813BBBK0123", DTRoot: "/nonexistent"}, "bbb", "1813BBBK0123"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id, err := hwinfo.Read(tc.src)
			if err != nil || id.Board != tc.board || id.Canonical != tc.id {
				t.Fatalf("Read: %+v %v", id, err)
			}
		})
	}
}

func TestErrorsSayWhatIsWrong(t *testing.T) {
	if _, err := hwinfo.Read(board(t, "Pine64 RockPro64\x00", "x", "")); !errors.Is(err, hwinfo.ErrUnknownBoard) {
		t.Errorf("unknown model: %v", err)
	}
	if _, err := hwinfo.Read(board(t, "TI AM335x BeagleBone Black\x00", "", "")); err == nil {
		t.Error("no serial-number accepted")
	}
	if _, err := hwinfo.Read(board(t, "TI AM335x BeagleBone Black\x00", "../../etc\x00", "")); !errors.Is(err, hwid.ErrBadHardwareID) {
		t.Errorf("hostile serial-number: %v", err)
	}
	if _, err := hwinfo.Read(board(t, "Raspberry Pi 4 Model B\x00", "", "Serial : zz\n")); !errors.Is(err, hwid.ErrBadHardwareID) {
		t.Errorf("bad cpuinfo serial: %v", err)
	}
	if _, err := hwinfo.Read(hwinfo.Sources{DTRoot: t.TempDir()}); err == nil {
		t.Error("no model accepted")
	}
}
