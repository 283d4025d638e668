package coreapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
)

// StatusError is a non-2xx answer from core.
type StatusError struct {
	Status     int
	Body       Error
	RetryAfter string
}

func (e *StatusError) Error() string {
	if e.Body.Message != "" {
		return fmt.Sprintf("core answered %d %s: %s", e.Status, e.Body.Code, e.Body.Message)
	}
	return fmt.Sprintf("core answered %d", e.Status)
}

// Client calls core's API. The caller's http.Client carries the mTLS
// configuration (its certificate is its identity).
type Client struct {
	base string
	hc   *http.Client
}

// NewClient makes a client of the core at base (https://host:port).
func NewClient(base string, hc *http.Client) (*Client, error) {
	u, err := url.Parse(base)
	if err != nil || u.Scheme != "https" || u.Host == "" {
		return nil, fmt.Errorf("core URL %q: want https://host:port", base)
	}
	return &Client{base: strings.TrimSuffix(base, "/"), hc: hc}, nil
}

// do sends a request and decodes a 2xx answer into out; it returns the
// status code.
func (c *Client) do(ctx context.Context, route Route, path string, header http.Header, body, out any) (int, error) {
	method := route.Method
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return 0, err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, rd)
	if err != nil {
		return 0, err
	}
	for k, v := range header {
		req.Header[k] = v
	}
	if body != nil {
		req.Header.Set("Content-Type", MediaTypeJSON)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return 0, fmt.Errorf("%s %s: %w", method, path, err)
	}
	defer func() { _ = resp.Body.Close() }()
	if resp.StatusCode >= 300 {
		se := &StatusError{Status: resp.StatusCode, RetryAfter: resp.Header.Get("Retry-After")}
		_ = json.NewDecoder(io.LimitReader(resp.Body, 64<<10)).Decode(&se.Body)
		return resp.StatusCode, se
	}
	if out != nil {
		if err := json.NewDecoder(io.LimitReader(resp.Body, 64<<20)).Decode(out); err != nil {
			return resp.StatusCode, fmt.Errorf("%s %s: decode answer: %w", method, path, err)
		}
	}
	return resp.StatusCode, nil
}

// Register registers a device (proxy); created is false when the hardware
// ID was known.
func (c *Client) Register(ctx context.Context, r RegisterRequest) (*Device, bool, error) {
	var d Device
	status, err := c.do(ctx, RouteRegister, RouteRegister.URL(), nil, r, &d)
	if err != nil {
		return nil, false, err
	}
	return &d, status == http.StatusCreated, nil
}

// RecordIssued tells core about a certificate issued at enrollment (proxy).
func (c *Client) RecordIssued(ctx context.Context, serial string, ic IssuedCertificate) (*Device, error) {
	var d Device
	_, err := c.do(ctx, RouteRecordIssued, RouteRecordIssued.URL(serial), nil, ic, &d)
	return &d, err
}

// Device describes a device.
func (c *Client) Device(ctx context.Context, serial string) (*Device, error) {
	var d Device
	_, err := c.do(ctx, RouteDevice, RouteDevice.URL(serial), nil, nil, &d)
	return &d, err
}

// List lists devices after a cursor.
func (c *Client) List(ctx context.Context, after string, limit int) (*DeviceList, error) {
	var l DeviceList
	q := url.Values{}
	if after != "" {
		q.Set("after", after)
	}
	if limit > 0 {
		q.Set("limit", strconv.Itoa(limit))
	}
	_, err := c.do(ctx, RouteListDevices, RouteListDevices.URL()+"?"+q.Encode(), nil, nil, &l)
	return &l, err
}

// SetDeviceData changes a device's data if it is still at generation.
func (c *Client) SetDeviceData(ctx context.Context, serial string, generation uint64, ch DataChange) (*Device, error) {
	var d Device
	_, err := c.do(ctx, RouteSetDeviceData, RouteSetDeviceData.URL(serial), http.Header{"If-Match": {IfMatch(generation)}}, ch, &d)
	return &d, err
}

// Group describes a group.
func (c *Client) Group(ctx context.Context, name string) (*Group, error) {
	var g Group
	_, err := c.do(ctx, RouteGroup, RouteGroup.URL(name), nil, nil, &g)
	return &g, err
}

// SetGroupData changes a group's data if it is still at version.
func (c *Client) SetGroupData(ctx context.Context, name string, version uint64, ch DataChange) (*Group, error) {
	var g Group
	_, err := c.do(ctx, RouteSetGroupData, RouteSetGroupData.URL(name), http.Header{"If-Match": {IfMatch(version)}}, ch, &g)
	return &g, err
}

// Reprovision moves a device to a new generation.
func (c *Client) Reprovision(ctx context.Context, serial string) (*Device, error) {
	var d Device
	_, err := c.do(ctx, RouteReprovision, RouteReprovision.URL(serial), nil, struct{}{}, &d)
	return &d, err
}

// Revoke revokes a device.
func (c *Client) Revoke(ctx context.Context, serial, reason string) (*Device, error) {
	var d Device
	_, err := c.do(ctx, RouteRevoke, RouteRevoke.URL(serial), nil, RevokeRequest{Reason: reason}, &d)
	return &d, err
}

// DeviceAudit lists a device's audit trail after sequence number after.
func (c *Client) DeviceAudit(ctx context.Context, serial string, after uint64) ([]Event, error) {
	return c.audit(ctx, RouteDeviceAudit, serial, after)
}

// GroupAudit lists a group's audit trail after sequence number after.
func (c *Client) GroupAudit(ctx context.Context, group string, after uint64) ([]Event, error) {
	return c.audit(ctx, RouteGroupAudit, group, after)
}

func (c *Client) audit(ctx context.Context, route Route, name string, after uint64) ([]Event, error) {
	var ev []Event
	_, err := c.do(ctx, route, route.URL(name)+"?after="+strconv.FormatUint(after, 10), nil, nil, &ev)
	return ev, err
}

// ErrNotModified is Bundle's answer when the ETag still matches.
var ErrNotModified = errors.New("not modified")

// Bundle fetches a device's bundle; with etag set, ErrNotModified means the
// device has it. The caller reads and closes the body (the device verifies
// while it reads).
func (c *Client) Bundle(ctx context.Context, serial, etag string) (io.ReadCloser, string, error) {
	req, err := http.NewRequestWithContext(ctx, RouteBundle.Method, c.base+RouteBundle.URL(serial), nil)
	if err != nil {
		return nil, "", err
	}
	if etag != "" {
		req.Header.Set("If-None-Match", etag)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, "", fmt.Errorf("fetch bundle: %w", err)
	}
	switch {
	case resp.StatusCode == http.StatusNotModified:
		_ = resp.Body.Close()
		return nil, etag, ErrNotModified
	case resp.StatusCode != http.StatusOK:
		defer func() { _ = resp.Body.Close() }()
		se := &StatusError{Status: resp.StatusCode, RetryAfter: resp.Header.Get("Retry-After")}
		_ = json.NewDecoder(io.LimitReader(resp.Body, 64<<10)).Decode(&se.Body)
		return nil, "", se
	}
	return resp.Body, resp.Header.Get("ETag"), nil
}

// BackupInfo is what a backup holds, as core announced it.
type BackupInfo struct {
	Size    int64
	Devices int
	Groups  int
}

// Backup copies core's store to w (GET /v1/backup); a copy shorter than
// announced is an error.
func (c *Client) Backup(ctx context.Context, w io.Writer) (*BackupInfo, error) {
	req, err := http.NewRequestWithContext(ctx, RouteBackup.Method, c.base+RouteBackup.URL(), nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("backup: %w", err)
	}
	defer func() { _ = resp.Body.Close() }()
	if resp.StatusCode != http.StatusOK {
		se := &StatusError{Status: resp.StatusCode, RetryAfter: resp.Header.Get("Retry-After")}
		_ = json.NewDecoder(io.LimitReader(resp.Body, 64<<10)).Decode(&se.Body)
		return nil, se
	}
	info := &BackupInfo{Size: resp.ContentLength}
	info.Devices, _ = strconv.Atoi(resp.Header.Get(HeaderBackupDevices))
	info.Groups, _ = strconv.Atoi(resp.Header.Get(HeaderBackupGroups))
	n, err := io.Copy(w, resp.Body)
	if err != nil {
		return nil, fmt.Errorf("backup: %d bytes, then: %w", n, err)
	}
	if n != resp.ContentLength {
		return nil, fmt.Errorf("backup: %d of %d bytes", n, resp.ContentLength)
	}
	return info, nil
}
