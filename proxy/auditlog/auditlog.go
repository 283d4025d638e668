// Package auditlog is the factory record: an append-only log of every
// enrollment attempt, one JSON object per line, each carrying the SHA-256
// of the line before it, so that an edited, inserted or removed line breaks
// the chain. Every record is fsynced before the attempt is answered.
//
// The chain proves the order and integrity of what is there; it cannot
// prove that nothing was cut from the end. The status page and `prov-proxy
// audit verify` print the head (sequence number and hash) for an operator
// to note elsewhere.
package auditlog

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"
)

// Results of an attempt.
const (
	Enrolled = "enrolled"
	Refused  = "refused"
	Failed   = "failed"
)

// RuleBadRequest is the Rule of an attempt refused for what it sent (a
// malformed hardware ID or CSR), not by a vouching rule.
const RuleBadRequest = "bad_request"

// Step is one step of an attempt and its time, in microseconds (an
// integer: the chain's hashes are over the JSON, which has one spelling
// of an integer).
type Step struct {
	Name string `json:"name"`
	US   int64  `json:"us"`
}

// Genesis is the "previous hash" of the first record.
var Genesis = strings.Repeat("0", 64)

// ErrBroken: the chain does not verify.
var ErrBroken = errors.New("factory record chain broken")

// Record is one attempt.
type Record struct {
	Seq        uint64    `json:"seq"`
	Time       time.Time `json:"time"`
	Proxy      string    `json:"proxy"`
	Source     string    `json:"source"`
	Board      string    `json:"board,omitempty"`
	HardwareID string    `json:"hardwareId,omitempty"`
	Serial     string    `json:"serial,omitempty"`
	CertSerial string    `json:"certSerial,omitempty"`
	Batch      string    `json:"batch,omitempty"`
	// EK is the endorsement key hash (enrollapi.EKHash) of the TPM an
	// attested board's key was proven resident in; none for a software
	// key (omitted, so older records' hashes are unchanged).
	EK     string `json:"ekSha256,omitempty"`
	Result string `json:"result"`
	// Rule names what refused an attempt: a vouching rule
	// (enrollapi.RefusalRule: network, rate, manifest, window, quota,
	// reenrollment) or RuleBadRequest; the console counts refusals by it
	// and tells the operator what to do. Records written before it have
	// none (omitted, so their hashes are unchanged).
	Rule   string `json:"rule,omitempty"`
	Reason string `json:"reason,omitempty"`
	// Steps are the time the attempt spent in each step, in order (check,
	// admit, register, revoke, sign, bundle; as far as it went). Records
	// written before them have none.
	Steps []Step `json:"steps,omitempty"`
	Prev  string `json:"prev"`
	Hash  string `json:"hash"`
}

// digest is the SHA-256 of the record's JSON with Hash empty.
func (r Record) digest() (string, error) {
	r.Hash = ""
	b, err := json.Marshal(r)
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:]), nil
}

// Log is an open factory record.
//
// Appends are group-committed: each record is written in order under mu,
// then its writer waits for an fsync that covers it; one fsync serves every
// record written while the one before it ran. A failed write or fsync makes
// the log refuse every later append (an fsync error may have dropped pages
// the kernel will not report again); a restart re-reads and re-verifies it.
type Log struct {
	mu      sync.Mutex // the chain: seq, head, err, written
	f       *os.File
	path    string
	seq     uint64
	head    string
	err     error  // sticky
	written uint64 // last seq written to the file

	syncMu sync.Mutex // one fsync at a time
	synced uint64     // last seq known durable (under syncMu)
}

// Open opens (creating) the log at path, verifies the whole chain, and
// calls replay with each record, oldest first. A torn last line (a crash
// in the middle of a write that was never acknowledged) is cut off; any
// other damage is ErrBroken.
func Open(path string, replay func(Record)) (*Log, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600) //nolint:gosec // operator's configuration
	if err != nil {
		return nil, fmt.Errorf("factory record: %w", err)
	}
	l := &Log{f: f, path: path, head: Genesis}
	good, err := scan(f, func(r Record) error {
		l.seq, l.head = r.Seq, r.Hash
		if replay != nil {
			replay(r)
		}
		return nil
	})
	if err != nil {
		_ = f.Close()
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if err := f.Truncate(good); err != nil { // drop a torn tail, if any
		_ = f.Close()
		return nil, fmt.Errorf("factory record: %w", err)
	}
	if _, err := f.Seek(good, io.SeekStart); err != nil {
		_ = f.Close()
		return nil, fmt.Errorf("factory record: %w", err)
	}
	return l, nil
}

// scan reads and verifies records; it returns the length of the good
// prefix. Only an unterminated last line may be bad.
func scan(rd io.Reader, fn func(Record) error) (int64, error) {
	br := bufio.NewReader(rd)
	var off int64
	prev, seq := Genesis, uint64(0)
	for line := 1; ; line++ {
		b, err := br.ReadBytes('\n')
		if errors.Is(err, io.EOF) {
			if len(b) > 0 {
				return off, nil // torn last line: cut
			}
			return off, nil
		}
		if err != nil {
			return off, err
		}
		var r Record
		dec := json.NewDecoder(bytes.NewReader(b))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&r); err != nil {
			return off, fmt.Errorf("%w: line %d is not a record: %w", ErrBroken, line, err)
		}
		want, err := r.digest()
		if err != nil {
			return off, err
		}
		switch {
		case r.Hash != want:
			return off, fmt.Errorf("%w: line %d (seq %d) was changed: its hash does not match its content", ErrBroken, line, r.Seq)
		case r.Prev != prev:
			return off, fmt.Errorf("%w: line %d (seq %d) does not follow the line before it (removed or inserted lines)", ErrBroken, line, r.Seq)
		case r.Seq != seq+1:
			return off, fmt.Errorf("%w: line %d has seq %d after %d", ErrBroken, line, r.Seq, seq)
		}
		if err := fn(r); err != nil {
			return off, err
		}
		prev, seq = r.Hash, r.Seq
		off += int64(len(b))
	}
}

// Append completes r (sequence number, time if unset, chain) and writes it
// durably: it returns after an fsync that covers the record.
func (l *Log) Append(r Record) (Record, error) {
	r, err := l.write(r)
	if err != nil {
		return r, err
	}
	return r, l.syncThrough(r.Seq)
}

func (l *Log) write(r Record) (Record, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.err != nil {
		return r, l.err
	}
	r.Seq = l.seq + 1
	if r.Time.IsZero() {
		r.Time = time.Now()
	}
	r.Time = r.Time.UTC()
	r.Prev = l.head
	h, err := r.digest()
	if err != nil {
		return r, err
	}
	r.Hash = h
	b, err := json.Marshal(r)
	if err != nil {
		return r, err
	}
	if _, err := l.f.Write(append(b, '\n')); err != nil {
		l.err = fmt.Errorf("factory record write failed, restart the proxy to re-verify it: %w", err)
		return r, l.err
	}
	l.seq, l.head, l.written = r.Seq, r.Hash, r.Seq
	return r, nil
}

// syncThrough returns once record seq is durable.
func (l *Log) syncThrough(seq uint64) error {
	l.syncMu.Lock()
	defer l.syncMu.Unlock()
	if l.synced >= seq {
		return nil // an fsync that started after our write covered it
	}
	l.mu.Lock()
	target, sticky := l.written, l.err
	l.mu.Unlock()
	if sticky != nil {
		return sticky
	}
	if err := l.f.Sync(); err != nil {
		l.mu.Lock()
		l.err = fmt.Errorf("factory record sync failed, restart the proxy to re-verify it: %w", err)
		sticky = l.err
		l.mu.Unlock()
		return sticky
	}
	l.synced = target
	return nil
}

// Head is the last sequence number and hash.
func (l *Log) Head() (uint64, string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.seq, l.head
}

// Close closes the file.
func (l *Log) Close() error { return l.f.Close() }

// Verify checks a log file's chain without changing it; it returns the
// number of records and the head hash.
func Verify(path string) (uint64, string, error) {
	f, err := os.Open(path) //nolint:gosec // the operator names it
	if err != nil {
		return 0, "", err
	}
	defer func() { _ = f.Close() }()
	var n uint64
	head := Genesis
	end, err := scan(f, func(r Record) error { n, head = r.Seq, r.Hash; return nil })
	if err != nil {
		return n, head, err
	}
	if fi, err := f.Stat(); err == nil && fi.Size() != end {
		return n, head, fmt.Errorf("%w: %d bytes after the last complete record (a torn write, or tampering)", ErrBroken, fi.Size()-end)
	}
	return n, head, nil
}

// Read calls fn with each record of a log file, verifying as it goes.
func Read(path string, fn func(Record) error) error {
	f, err := os.Open(path) //nolint:gosec // the operator names it
	if err != nil {
		return err
	}
	defer func() { _ = f.Close() }()
	_, err = scan(f, fn)
	return err
}
