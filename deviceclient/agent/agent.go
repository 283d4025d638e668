// Package agent is the enrolled device's life in the field: fetch, verify
// and install its bundle from core (update.go), renew its certificate at
// step-ca (renew.go), and, as a daemon, follow its MQTT topic, poll when
// the broker is away, renew on time and remount after an update (run.go).
package agent

import (
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"sync"
	"time"

	"github.com/fleetprov/prov/core/contract/coreapi"
	"github.com/fleetprov/prov/deviceclient/inspect"
	"github.com/fleetprov/prov/deviceclient/install"
	"github.com/fleetprov/prov/deviceclient/mount"
	"github.com/fleetprov/prov/deviceclient/state"
	"github.com/fleetprov/prov/deviceclient/tpmkey"
	"github.com/fleetprov/prov/pki"
	"github.com/fleetprov/prov/pki/signedimage"
)

// ErrCertExpired is a device certificate past its end: step-ca renews only
// a valid certificate, so the device must be enrolled again at a factory.
var ErrCertExpired = errors.New("device certificate expired")

// Options tune the agent.
type Options struct {
	// TPM is the TPM holding the device's key when the state directory
	// has a key.tpm ("" the one the file names, /dev/tpmrm0 by default;
	// "unix:PATH" a software TPM).
	TPM string
	// SkipTPMKey leaves a key in the TPM unloaded, for a command that
	// uses no key (mount: at early boot the TPM's driver may not be up
	// yet, and the image is verified against the root alone); the agent
	// then cannot talk to core or step-ca.
	SkipTPMKey bool
	// Install is what a bundle is checked against: Rules, Now and Floor
	// (nil: the state directory's floor without a build time; its write
	// failures are logged); Roots and Serial are set by New.
	Install install.Options
	// Layout, if set, is where the image is mounted; after an update the
	// new image is mounted if the old one was.
	Layout *mount.Layout
	// Observe, for a daemon that does not mount (Layout nil), is where the
	// mount units mount: a trial is settled only while its image is
	// mounted there, which a mount in this boot did (/run is a tmpfs).
	Observe *mount.Layout
	// DownloadTimeout bounds one bundle download (default 60 s).
	DownloadTimeout time.Duration
	// PollInterval is how often to check when MQTT is down (default 5
	// min); a tenth of it is jitter. With MQTT up, every 12 intervals.
	PollInterval time.Duration
	// RenewAt is the fraction of the certificate's life after which it is
	// renewed (default 2/3).
	RenewAt float64
	Log     *slog.Logger
	// Health is the health check of a newly mounted generation, and the
	// boot counter of its trial.
	Health Health
	// WatchInterval is how often the daemon looks at the state directory
	// for a report to send or a trial to check that another prov-device
	// process (the mount units) left (default 2 s): a stat and a small
	// read.
	WatchInterval time.Duration
	// ReportBackoff and ReportBackoffCap bound the daemon's retries of a
	// report core did not take (default 5 s doubling to 10 min, jittered).
	ReportBackoff, ReportBackoffCap time.Duration
	// ReportEvery is how often the daemon sends its latest report again
	// when nothing changed (and once at its start), so that core's fleet
	// view tells a quiet device from one gone silent (stale after 26 h);
	// DefaultReportEvery if zero.
	ReportEvery time.Duration
	// Notify sends systemd notifications (READY=1, WATCHDOG=1, ...); nil
	// sends them to $NOTIFY_SOCKET if set.
	Notify func(string) error
}

// Agent is an enrolled device.
type Agent struct {
	st  *state.Dir
	dev *state.Device
	kp  *pki.KeyPair
	// tpmKey is the device's key in its TPM, if that is where it is.
	tpmKey *tpmkey.Key
	roots  *pki.TrustBundle
	o      Options
	core   *coreapi.Client
	log    *slog.Logger
	// fallback is what Recover fell back from, if anything.
	fallback *install.Fallback
	// daemon: Run is running; health checks run in the background.
	daemon bool
	// mountMu keeps a fallback's mount and an update's apart.
	mountMu sync.Mutex
}

// identity loads the device's certificate with its key: the key file, or
// the key in the TPM if the state directory holds a key.tpm.
func identity(st *state.Dir, tpm string, skipTPM bool) (*pki.KeyPair, *tpmkey.Key, error) {
	blob, err := st.TPMKey()
	switch {
	case err != nil:
		return nil, nil, err
	case blob != nil && skipTPM:
		return nil, nil, nil
	case blob == nil:
		kp, err := st.Identity()
		return kp, nil, err
	}
	key, err := tpmkey.OpenKey(blob, tpm)
	if errors.Is(err, tpmkey.ErrNotThisTPM) {
		return nil, nil, fmt.Errorf("device key %s: %w; put the card back in the board it was enrolled on, or enroll this board at a factory proxy with an empty state directory (the proxy's re-enrollment policy decides)",
			st.File(state.TPMKeyFile), err)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("device key %s: %w", st.File(state.TPMKeyFile), err)
	}
	kp, err := st.SignerIdentity(key)
	if err != nil {
		_ = key.Close()
		return nil, nil, err
	}
	return kp, key, nil
}

// Close unloads the device's key from the TPM, if it is there.
func (a *Agent) Close() error {
	if a.tpmKey == nil {
		return nil
	}
	return a.tpmKey.Close()
}

// New loads the device's enrollment and identity from st.
func New(st *state.Dir, o Options) (*Agent, error) {
	dev, err := st.Device()
	if err != nil {
		return nil, err
	}
	roots, err := st.Roots()
	if err != nil {
		return nil, err
	}
	u, err := url.Parse(dev.CoreURL)
	if err != nil {
		return nil, fmt.Errorf("%s: core URL: %w", st.File(state.DeviceFile), err)
	}
	kp, key, err := identity(st, o.TPM, o.SkipTPMKey)
	if err != nil {
		return nil, err
	}
	if o.DownloadTimeout == 0 {
		o.DownloadTimeout = 60 * time.Second
	}
	if o.PollInterval == 0 {
		o.PollInterval = 5 * time.Minute
	}
	if o.RenewAt == 0 {
		o.RenewAt = 2.0 / 3
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.Health.Timeout == 0 {
		o.Health.Timeout = 2 * time.Minute
	}
	if o.WatchInterval == 0 {
		o.WatchInterval = 2 * time.Second
	}
	if o.ReportBackoff == 0 {
		o.ReportBackoff = 5 * time.Second
	}
	if o.ReportEvery == 0 {
		o.ReportEvery = DefaultReportEvery
	}
	if o.ReportBackoffCap == 0 {
		o.ReportBackoffCap = 10 * time.Minute
	}
	if o.Notify == nil {
		o.Notify = sdNotify
	}
	log := o.Log.With("serial", dev.Serial)
	if o.Install.Floor == nil {
		o.Install.Floor = st.ClockFloor(time.Time{}, func(err error) { log.Warn("clock floor", "err", err) })
	}
	o.Install.Roots, o.Install.Serial = roots, dev.Serial
	a := &Agent{st: st, dev: dev, kp: kp, tpmKey: key, roots: roots, o: o, log: log}
	// The host name is given, not left to the transport: a check at the
	// floor needs it also for an IP address (pki.ClientOptions).
	hc := &http.Client{Transport: &http.Transport{
		TLSClientConfig: pki.ClientTLSConfig(kp, roots, pki.ClientOptions{ServerName: u.Hostname(), ServerRoles: []pki.Role{pki.RoleCore},
			Floor: o.Install.Floor, Now: o.Install.Now}),
		ForceAttemptHTTP2: true, IdleConnTimeout: 90 * time.Second, ResponseHeaderTimeout: 30 * time.Second,
	}}
	if a.core, err = coreapi.NewClient(dev.CoreURL, hc); err != nil {
		_ = a.Close()
		return nil, fmt.Errorf("%s: %w", st.File(state.DeviceFile), err)
	}
	return a, nil
}

// Device is the enrollment.
func (a *Agent) Device() *state.Device { return a.dev }

func (a *Agent) now() time.Time {
	if a.o.Install.Now != nil {
		return a.o.Install.Now()
	}
	return time.Now()
}

// ClockFloor is the earliest time the device believes it is: its binary's
// build time, the issue time of the newest bundle it accepted, or the
// latest issue time of a chain it verified (pki.Floor).
func (a *Agent) ClockFloor() time.Time { return a.o.Install.Floor.Time() }

// effectiveNow is now, never before the clock floor.
func (a *Agent) effectiveNow() time.Time { return a.o.Install.Floor.At(a.now()) }

// fail records an error for `status` and returns it.
func (a *Agent) fail(err error) error {
	now := a.now().UTC()
	_ = a.st.UpdateStatus(func(s *state.Status) {
		s.LastError, s.ErrorAt, s.Refusal, s.RefusalStep, s.RefusalCheck = err.Error(), now, "", 0, ""
		if r, ok := signedimage.RefusalOf(err); ok {
			s.Refusal, s.RefusalStep = string(r.Reason), int(r.Step)
		}
		if c, ok := errors.AsType[*inspect.Check](err); ok {
			s.RefusalCheck = c.Name()
		}
	})
	return err
}
