// Package nspawn is systemd as PID 1 in a container, for tests: a real
// Debian 12 (Root: built once per machine with mmdebstrap and cached),
// booted with systemd-nspawn on a per-test overlay of that root (Boot), and
// driven from the test (Machine: run commands inside, read its files,
// power off, reboot, cut the power).
//
// It needs root, mmdebstrap, systemd-nspawn (systemd-container) and
// nsenter (util-linux), and skips without them (fails under
// PROV_REQUIRE_ALL=1). No systemd is needed on the host: nspawn runs with
// --register=no --keep-unit.
//
// What a container needs for loop and overlay mounts, found out on
// Debian 12's systemd-nspawn 252: its default capability set keeps
// CAP_SYS_ADMIN and CAP_MKNOD and its seccomp filter allows mount(2), so
// the only thing missing is the devices. Its /dev is a tmpfs with no loop
// nodes and nothing like udev makes them, so Boot binds /dev/loop-control
// and /dev/loop0 to loop31 in (creating missing nodes on the host with
// mknod). With --register=no and --keep-unit nspawn installs no device
// cgroup policy of its own; the container has what the calling process's
// cgroup allows. An overlay inside the container can take any lower
// directory, but its upper directory cannot be on the container's root,
// which is itself an overlay (the kernel refuses overlayfs as an upper
// layer): use /run or /tmp (tmpfs in the container) or a bind mount.
package nspawn
