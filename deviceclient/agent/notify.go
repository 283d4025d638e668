package agent

import (
	"net"
	"os"
	"strconv"
	"time"
)

// sdNotify sends a systemd notification to $NOTIFY_SOCKET (a datagram
// socket; a name starting with @ is abstract). Without the variable it
// does nothing: the daemon also runs outside systemd.
// SystemdNotify sends a notification (READY=1, STATUS=..., WATCHDOG=1) to
// $NOTIFY_SOCKET, if systemd gave one.
func SystemdNotify(state string) error { return sdNotify(state) }

func sdNotify(state string) error {
	name := os.Getenv("NOTIFY_SOCKET")
	if name == "" {
		return nil
	}
	if name[0] == '@' {
		name = "\x00" + name[1:]
	}
	conn, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: name, Net: "unixgram"})
	if err != nil {
		return err
	}
	defer func() { _ = conn.Close() }()
	_, err = conn.Write([]byte(state))
	return err
}

// watchdogInterval is half of $WATCHDOG_USEC when systemd asked this
// process (WATCHDOG_PID unset or ours) for keep-alives; zero otherwise.
func watchdogInterval() time.Duration {
	usec, err := strconv.ParseInt(os.Getenv("WATCHDOG_USEC"), 10, 64)
	if err != nil || usec <= 0 {
		return 0
	}
	if pid := os.Getenv("WATCHDOG_PID"); pid != "" && pid != strconv.Itoa(os.Getpid()) {
		return 0
	}
	return time.Duration(usec) * time.Microsecond / 2
}
