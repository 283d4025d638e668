// Package batchreport is the signed batch report of the factory proxy: for
// one production batch, every board the factory record (proxy/auditlog)
// holds, with the record's head at export, as CSV or JSON, and a detached
// signature by the proxy's TLS identity key that OpenSSL can check as well
// as Verify.
//
// A board attempted several times is one row: its final outcome (the last
// attempt in the record) and the number of attempts. Boards are keyed by
// serial, which the proxy derives from the normalised hardware ID, so two
// spellings of one ID are one board; a record without a serial (refused
// before the ID was parsed) is keyed by its hardware ID as sent.
//
// The signature is DER ECDSA over the SHA-256 of the report file's exact
// bytes ("openssl dgst -sha256 -verify"), written beside the report as
// FILE.sig, with the signer's certificate chain (leaf first) as FILE.pem.
package batchreport

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/fleetprov/prov/proxy/auditlog"
	"github.com/fleetprov/prov/proxy/contract/enrollapi"
)

// Version names the report layout; it is the first value of both formats.
const Version = "prov-batch-report/1"

// Format is a report's file format.
type Format string

// Formats.
const (
	CSV  Format = "csv"
	JSON Format = "json"
)

// ParseFormat returns the format named s.
func ParseFormat(s string) (Format, error) {
	switch f := Format(s); f {
	case CSV, JSON:
		return f, nil
	}
	return "", fmt.Errorf("format %q: want csv or json", s)
}

// RuleBadRequest is the rule of a refusal that names no vouching rule: a
// malformed request (the reason names the field).
const RuleBadRequest = auditlog.RuleBadRequest

// rules are the vouching rules a refusal's reason starts with
// (vouch.Refusal writes "<rule>: <reason>").
var rules = []enrollapi.RefusalRule{enrollapi.RuleNetwork, enrollapi.RuleRate, enrollapi.RuleManifest,
	enrollapi.RuleWindow, enrollapi.RuleQuota, enrollapi.RuleReenrollment}

// Board is one board of the batch: its final attempt and how many it took.
type Board struct {
	HardwareID string    `json:"hardwareId"`
	Board      string    `json:"board"`
	Serial     string    `json:"serial"`
	CertSerial string    `json:"certSerial"`
	Time       time.Time `json:"time"`
	Result     string    `json:"result"`
	Rule       string    `json:"rule,omitempty"` // refusals only
	Reason     string    `json:"reason,omitempty"`
	Attempts   int       `json:"attempts"`
	Seq        uint64    `json:"seq"` // the final attempt's entry in the record
}

// Head is the factory record at export: its entry count and the hash of
// its last entry, as `prov-proxy audit verify` prints them.
type Head struct {
	Entries uint64 `json:"entries"`
	Hash    string `json:"hash"`
}

// Report is one batch's report.
type Report struct {
	Version      string    `json:"version"`
	Batch        string    `json:"batch"`
	ManifestSize int       `json:"manifestSize"`
	ExportedAt   time.Time `json:"exportedAt"`
	Record       Head      `json:"record"`
	Boards       []Board   `json:"boards"`
}

// Build reads the factory record at path, verifying its chain, and returns
// the report of batch. A record being appended to may be read: a torn last
// line is not part of it, and the head is the last complete entry.
func Build(path, batch string, manifestSize int, now time.Time) (*Report, error) {
	r := &Report{Version: Version, Batch: batch, ManifestSize: manifestSize, ExportedAt: now.UTC().Truncate(time.Second),
		Record: Head{Hash: auditlog.Genesis}, Boards: []Board{}}
	index := map[string]int{}
	err := auditlog.Read(path, func(rec auditlog.Record) error {
		r.Record = Head{Entries: rec.Seq, Hash: rec.Hash}
		if rec.Batch != batch {
			return nil
		}
		key := "serial:" + rec.Serial
		if rec.Serial == "" {
			key = "hwid:" + rec.HardwareID
		}
		b := Board{HardwareID: rec.HardwareID, Board: rec.Board, Serial: rec.Serial, CertSerial: rec.CertSerial,
			Time: rec.Time, Result: rec.Result, Reason: rec.Reason, Seq: rec.Seq, Attempts: 1}
		if rec.Result == auditlog.Refused {
			b.Rule = ruleOf(rec)
		}
		if i, ok := index[key]; ok {
			b.Attempts += r.Boards[i].Attempts
			r.Boards[i] = b
			return nil
		}
		index[key] = len(r.Boards)
		r.Boards = append(r.Boards, b)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("batch report of %s: %w", batch, err)
	}
	return r, nil
}

// ruleOf is the rule of a refusal: the record's own, or, in a record
// written before records named it, the reason's prefix.
func ruleOf(rec auditlog.Record) string {
	if rec.Rule != "" {
		return rec.Rule
	}
	for _, rule := range rules {
		if strings.HasPrefix(rec.Reason, string(rule)+": ") {
			return string(rule)
		}
	}
	return RuleBadRequest
}

// Export is Build then Encode: the report file's bytes, for the command
// line and the console.
func Export(path, batch string, manifestSize int, format Format, now time.Time) ([]byte, error) {
	r, err := Build(path, batch, manifestSize, now)
	if err != nil {
		return nil, err
	}
	return r.Encode(format)
}

// CSV layout: a header row and a row of the report's own values, then a
// header row and one row per board.
var (
	csvReportHeader = []string{"version", "batch", "manifest_size", "exported_at", "record_entries", "record_head"}
	csvBoardHeader  = []string{"hardware_id", "board", "serial", "cert_serial", "time", "result", "rule", "reason", "attempts", "seq"}
)

// Encode writes the report in format.
func (r *Report) Encode(format Format) ([]byte, error) {
	switch format {
	case JSON:
		b, err := json.MarshalIndent(r, "", "  ")
		if err != nil {
			return nil, err
		}
		return append(b, '\n'), nil
	case CSV:
		var buf bytes.Buffer
		w := csv.NewWriter(&buf)
		rows := [][]string{csvReportHeader,
			{r.Version, r.Batch, strconv.Itoa(r.ManifestSize), r.ExportedAt.Format(time.RFC3339), strconv.FormatUint(r.Record.Entries, 10), r.Record.Hash},
			csvBoardHeader}
		for _, b := range r.Boards {
			rows = append(rows, []string{b.HardwareID, b.Board, b.Serial, b.CertSerial, b.Time.Format(time.RFC3339Nano),
				b.Result, b.Rule, b.Reason, strconv.Itoa(b.Attempts), strconv.FormatUint(b.Seq, 10)})
		}
		for _, row := range rows {
			for i := range row {
				row[i] = Cell(row[i])
			}
			if err := w.Write(row); err != nil {
				return nil, err
			}
		}
		w.Flush()
		return buf.Bytes(), w.Error()
	}
	return nil, fmt.Errorf("format %q: want csv or json", format)
}

// Cell defuses CSV injection: a spreadsheet runs a cell that starts with
// = + - @ (or a tab or CR, which some treat alike) as a formula, and
// hardware IDs, boards and reasons come from devices. Such a cell gets a
// leading single quote, which spreadsheets show as text; the JSON report
// holds the values unchanged.
func Cell(s string) string {
	if s != "" && strings.ContainsRune("=+-@\t\r", rune(s[0])) {
		return "'" + s
	}
	return s
}

// Parse reads a report's header (the batch, the export time and the head)
// from either format; boards are read only from JSON.
func Parse(data []byte) (*Report, error) {
	if bytes.HasPrefix(bytes.TrimSpace(data), []byte("{")) {
		var r Report
		dec := json.NewDecoder(bytes.NewReader(data))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&r); err != nil {
			return nil, fmt.Errorf("%w: %w", ErrMalformed, err)
		}
		if r.Version != Version {
			return nil, fmt.Errorf("%w: version %q, want %q", ErrMalformed, r.Version, Version)
		}
		return &r, nil
	}
	cr := csv.NewReader(bytes.NewReader(data))
	cr.FieldsPerRecord = -1
	var rows [][]string
	for len(rows) < 2 {
		row, err := cr.Read()
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrMalformed, err)
		}
		rows = append(rows, row)
	}
	if strings.Join(rows[0], ",") != strings.Join(csvReportHeader, ",") || len(rows[1]) != len(csvReportHeader) || rows[1][0] != Version {
		return nil, fmt.Errorf("%w: the first two rows are not a %s header", ErrMalformed, Version)
	}
	v := rows[1]
	r := &Report{Version: v[0], Batch: v[1], Record: Head{Hash: v[5]}}
	var errs []error
	var err error
	r.ManifestSize, err = strconv.Atoi(v[2])
	errs = append(errs, err)
	r.ExportedAt, err = time.Parse(time.RFC3339, v[3])
	errs = append(errs, err)
	r.Record.Entries, err = strconv.ParseUint(v[4], 10, 64)
	errs = append(errs, err)
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	return r, nil
}

// Sign returns the detached signature of a report file's bytes: DER ECDSA
// over their SHA-256, what `openssl dgst -sha256 -sign` writes.
func Sign(data []byte, key crypto.Signer) ([]byte, error) {
	if _, ok := key.Public().(*ecdsa.PublicKey); !ok {
		return nil, fmt.Errorf("%w: a %T", ErrNotProxyKey, key.Public())
	}
	sum := sha256.Sum256(data)
	sig, err := key.Sign(rand.Reader, sum[:], crypto.SHA256)
	if err != nil {
		return nil, fmt.Errorf("sign the batch report: %w", err)
	}
	return sig, nil
}
