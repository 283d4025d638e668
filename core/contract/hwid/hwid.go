// Package hwid turns a board's raw hardware ID, as the device read it, into
// the deployment's device-independent serial: 10 lower-case hex digits.
//
// The rule, version 1 (RuleVersion), is the same on every core instance:
//
//  1. Validate the raw ID strictly for its board and put it in canonical
//     form (see Boards): at most one trailing NUL is removed (devicetree
//     strings end in one); nothing else is trimmed or guessed.
//  2. serial = the first 10 hex digits of
//     SHA-256("prov-serial-v1" 0x00 board 0x00 canonical-id).
//
// Hashing gives every board type one format and never exposes the raw ID in
// names, topics or hostnames. Two different IDs can map to one serial
// (40 bits: about 0.5% for a fleet of 100,000); the registry detects that
// and refuses the second device. A raw ID never becomes a file name, store
// key, topic or hostname; only its canonical form is stored.
//
// Contract: linked by prov-core, prov-proxy and prov-device. A change here
// reaches boards in the field: a board derives its own serial with this rule
// and refuses an enrollment answer that disagrees, so the rule never
// changes in place; a new rule is a new RuleVersion beside the old.
package hwid

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
	"unicode/utf8"

	"github.com/fleetprov/prov/internal/untrusted"
)

// RuleVersion is the version of the ID-to-serial rule.
const RuleVersion = 1

// MaxRawLen bounds a raw hardware ID.
const MaxRawLen = 64

// ErrBadBoard and ErrBadHardwareID are the two ways input is refused.
var (
	ErrBadBoard      = errors.New("unknown board type")
	ErrBadHardwareID = errors.New("bad hardware ID")
)

// Board describes how one board type's ID looks.
type Board struct {
	// Name is the board type as devices and proxies send it.
	Name string
	// Describe says where the ID comes from and what it looks like.
	Describe string
	// canonical validates and normalises a raw ID (without its NUL).
	canonical func(string) (string, error)
}

// Boards are the supported board types. Adding one is adding an entry; the
// rule for the existing ones never changes within a RuleVersion.
var Boards = []Board{
	{
		Name:      "rpi4",
		Describe:  "Raspberry Pi 4: /proc/cpuinfo Serial or devicetree serial-number, 16 hex digits",
		canonical: hexDigits(16),
	},
	{
		Name:      "bbb",
		Describe:  "BeagleBone Black: devicetree serial-number (board EEPROM), 8 to 32 of A-Z and 0-9",
		canonical: alnum(8, 32),
	},
	{
		Name:      "bbai",
		Describe:  "BeagleBone AI: devicetree serial-number (board EEPROM), 8 to 32 of A-Z and 0-9",
		canonical: alnum(8, 32),
	},
}

// BoardNames lists the supported board types.
func BoardNames() []string {
	names := make([]string, len(Boards))
	for i, b := range Boards {
		names[i] = b.Name
	}
	return names
}

// ID is a validated hardware ID in canonical form.
type ID struct {
	Board     string
	Canonical string
}

// Key is the ID's unique key in the registry.
func (id ID) Key() string { return id.Board + "/" + id.Canonical }

// Serial is the ID's serial under the current rule.
func (id ID) Serial() string {
	h := sha256.New()
	h.Write([]byte("prov-serial-v1\x00"))
	h.Write([]byte(id.Board))
	h.Write([]byte{0})
	h.Write([]byte(id.Canonical))
	return hex.EncodeToString(h.Sum(nil))[:10]
}

// Parse validates a board type and a raw hardware ID.
func Parse(board, raw string) (ID, error) {
	i := slices.IndexFunc(Boards, func(b Board) bool { return b.Name == board })
	if i < 0 {
		return ID{}, fmt.Errorf("%w %s (want one of %s)", ErrBadBoard, untrusted.Quote(board), strings.Join(BoardNames(), ", "))
	}
	if len(raw) > MaxRawLen {
		return ID{}, fmt.Errorf("%w: %d bytes, at most %d", ErrBadHardwareID, len(raw), MaxRawLen)
	}
	s := strings.TrimSuffix(raw, "\x00") // devicetree strings end in one NUL
	if s == "" {
		return ID{}, fmt.Errorf("%w: empty", ErrBadHardwareID)
	}
	c, err := Boards[i].canonical(s)
	if err != nil {
		return ID{}, fmt.Errorf("%w for %s: %s: %s (%s)", ErrBadHardwareID, board, untrusted.Quote(s), err.Error(), Boards[i].Describe)
	}
	return ID{Board: board, Canonical: c}, nil
}

// The per-board rules count characters (runes; a byte that is not UTF-8
// counts as one) and say so: 16 Devanagari digits are "16 characters",
// not the 48 bytes they take. A character's position is counted the same
// way. What they accept is ASCII only, so for an accepted ID characters
// and bytes are the same.

func hexDigits(n int) func(string) (string, error) {
	return func(s string) (string, error) {
		if c := utf8.RuneCountInString(s); c != n {
			return "", fmt.Errorf("%d characters, want %d hex digits", c, n)
		}
		if i := untrusted.BadChar(s, func(c rune) bool { return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F' }); i > 0 {
			return "", fmt.Errorf("character %d is not a hex digit", i)
		}
		return strings.ToLower(s), nil
	}
}

func alnum(lo, hi int) func(string) (string, error) {
	return func(s string) (string, error) {
		if c := utf8.RuneCountInString(s); c < lo || c > hi {
			return "", fmt.Errorf("%d characters, want %d to %d", c, lo, hi)
		}
		if i := untrusted.BadChar(s, func(c rune) bool { return c >= '0' && c <= '9' || c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' }); i > 0 {
			return "", fmt.Errorf("character %d is not A-Z or 0-9", i)
		}
		return strings.ToUpper(s), nil
	}
}
