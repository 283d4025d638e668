package agent

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/url"
	"sync/atomic"
	"time"

	"github.com/eclipse/paho.golang/autopaho"
	"github.com/eclipse/paho.golang/paho"

	"github.com/fleetprov/prov/core/contract/coreapi"
	"github.com/fleetprov/prov/deviceclient/state"
	"github.com/fleetprov/prov/pki"
)

// Run is the daemon: it checks for a bundle at start, whenever a message
// arrives on the device's topic (the message is only a hint: whatever it
// says, the device asks core and verifies what core sends), and on a
// jittered poll (often while MQTT is down, rarely while it is up); it
// renews the certificate when due; it tells systemd it is ready and keeps
// its watchdog fed. It also runs the health check of a generation on
// trial (mounted by itself or by the mount units) in the background, and
// sends the latest report to core, again with back-off until core has it.
// It returns when ctx ends.
func (a *Agent) Run(ctx context.Context) error {
	a.daemon = true
	checks := make(chan string, 1)
	trigger := func(why string) {
		select {
		case checks <- why:
		default: // a check is pending already
		}
	}
	var mqttUp atomic.Bool
	cm, err := a.connectMQTT(ctx, trigger, &mqttUp)
	if err != nil {
		return err
	}
	trigger("start")
	_ = a.o.Notify("READY=1")
	a.log.Info("running", "core", a.dev.CoreURL, "mqtt", a.dev.MQTTURL, "topic", a.dev.MQTTTopic,
		"certificate_expires", a.Expiry().UTC(), "renew_due", a.RenewDue().UTC())

	var watchdog <-chan time.Time
	if d := watchdogInterval(); d > 0 {
		t := time.NewTicker(d)
		defer t.Stop()
		watchdog = t.C
	}
	poll := time.NewTimer(a.pollDelay(false))
	defer poll.Stop()
	renew := time.NewTimer(max(time.Until(a.RenewDue()), 0))
	defer renew.Stop()
	renewBackoff := time.Minute
	watch := time.NewTicker(a.o.WatchInterval)
	defer watch.Stop()
	heartbeat := time.NewTicker(a.o.ReportEvery)
	defer heartbeat.Stop()
	a.Heartbeat(ctx)
	rep := &reporter{min: a.o.ReportBackoff, cap: a.o.ReportBackoffCap}
	settled := make(chan struct{}, 1)
	settling := false
	var tried state.Trial // the trial last settled, not to be retried in a loop
	tend := func() {
		if !settling {
			if tr, err := a.st.Trial(); err == nil && tr != nil && *tr != tried {
				settling, tried = true, *tr
				go func() {
					defer func() { settled <- struct{}{} }()
					if _, err := a.Settle(ctx); err != nil && ctx.Err() == nil {
						a.log.Warn("trial", "err", err)
					}
				}()
			}
		}
		rec, err := a.st.LatestReport()
		if err != nil {
			a.log.Warn("report", "err", err)
			return
		}
		var pending *coreapi.Report
		if rec.Pending() {
			pending = &rec.Report
		}
		if !rep.due(pending, time.Now()) {
			return
		}
		if _, err := a.SendReport(ctx); err != nil && ctx.Err() == nil {
			a.log.Warn("report not sent; retrying", "err", err, "in", rep.failed(time.Now()))
		}
	}

	for {
		select {
		case <-ctx.Done():
			if settling {
				<-settled // the check's process group is killed with ctx
			}
			_ = a.o.Notify("STOPPING=1")
			dctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			_ = cm.Disconnect(dctx)
			cancel()
			a.log.Info("stopped")
			return nil
		case why := <-checks:
			if _, err := a.Update(ctx); err != nil && ctx.Err() == nil {
				a.log.Warn("check failed", "trigger", why, "err", err)
			}
			poll.Reset(a.pollDelay(mqttUp.Load()))
			tend()
		case <-watch.C:
			tend()
		case <-heartbeat.C:
			a.Heartbeat(ctx)
		case <-settled:
			settling = false
			tend()
		case <-poll.C:
			trigger("poll")
		case <-renew.C:
			err := a.Renew(ctx)
			switch {
			case err == nil:
				renewBackoff = time.Minute
				// step-ca backdates certificates; with a small --renew-at the
				// next due time may already be past: never renew more often
				// than every twentieth of a certificate's life.
				leaf := a.kp.Leaf()
				renew.Reset(max(time.Until(a.RenewDue()), leaf.NotAfter.Sub(leaf.NotBefore)/20, time.Second))
			case errors.Is(err, ErrCertExpired):
				a.log.Error("certificate expired: this device needs to be enrolled again at a factory proxy", "err", err)
				renew.Reset(time.Hour) // the clock may have been wrong
			default:
				a.log.Warn("renewal failed; retrying", "err", err, "in", renewBackoff)
				renew.Reset(renewBackoff)
				renewBackoff = min(2*renewBackoff, time.Hour)
			}
		case <-watchdog:
			_ = a.o.Notify("WATCHDOG=1")
		}
	}
}

// pollDelay is the next poll: the interval, or twelve of them while MQTT
// is up, less up to a tenth of jitter so a fleet does not poll in step.
func (a *Agent) pollDelay(mqttUp bool) time.Duration {
	d := a.o.PollInterval
	if mqttUp {
		d *= 12
	}
	return d - time.Duration(rand.Int64N(int64(d/10)+1)) //nolint:gosec // jitter, not a secret
}

// connectMQTT keeps a subscription to the device's topic over TLS with the
// device certificate (renewed certificates are used on reconnect),
// reconnecting with backoff until ctx ends.
func (a *Agent) connectMQTT(ctx context.Context, trigger func(string), up *atomic.Bool) (*autopaho.ConnectionManager, error) {
	u, err := url.Parse(a.dev.MQTTURL)
	if err != nil || (u.Scheme != "tls" && u.Scheme != "mqtts" && u.Scheme != "ssl") || u.Host == "" {
		return nil, fmt.Errorf("mqtt %q: want tls://host:port", a.dev.MQTTURL)
	}
	u.Scheme = "tls"
	topic := a.dev.MQTTTopic
	cfg := autopaho.ClientConfig{
		ServerUrls: []*url.URL{u},
		// The broker is core's (its certificate has the core role) or an
		// external one with a certificate from our root for its host name.
		TlsCfg:                        pki.ClientTLSConfig(a.kp, a.roots, pki.ClientOptions{ServerName: u.Hostname(), Floor: a.o.Install.Floor, Now: a.o.Install.Now}),
		KeepAlive:                     30,
		CleanStartOnInitialConnection: true,
		ConnectTimeout:                10 * time.Second,
		ReconnectBackoff: func(n int) time.Duration {
			d := min(time.Duration(1<<min(n, 6))*time.Second, time.Minute)
			return d + time.Duration(rand.Int64N(int64(d/4)+1)) //nolint:gosec // jitter
		},
		OnConnectionUp: func(cm *autopaho.ConnectionManager, _ *paho.Connack) {
			up.Store(true)
			go func() {
				sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
				defer cancel()
				if _, err := cm.Subscribe(sctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: topic, QoS: 1}}}); err != nil {
					a.log.Warn("mqtt subscribe failed", "topic", topic, "err", err)
					return
				}
				a.log.Info("mqtt subscribed", "topic", topic)
				trigger("mqtt connected") // anything missed while away
			}()
		},
		OnConnectionDown: func() bool {
			up.Store(false)
			a.log.Warn("mqtt connection lost; polling until it is back")
			return true
		},
		OnConnectError: func(err error) { a.log.Warn("mqtt connection failed", "broker", u.Host, "err", err) },
		ClientConfig: paho.ClientConfig{
			ClientID: coreapi.DeviceClientID(a.dev.Serial), // the only one core's broker accepts from this device
			OnPublishReceived: []func(paho.PublishReceived) (bool, error){func(p paho.PublishReceived) (bool, error) {
				if p.Packet.Topic == topic {
					a.log.Debug("mqtt notification", "payload", fmt.Sprintf("%.200q", p.Packet.Payload))
					trigger("mqtt")
				}
				return true, nil
			}},
		},
	}
	cm, err := autopaho.NewConnection(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("mqtt: %w", err)
	}
	return cm, nil
}
