#!/bin/sh
# Stage 2 of the vmlet test guest: /sbin/init on the ext4 root disk, PID 1 after switch_root. It sets up
# what the agent expects of a system (mounts, hostname, loopback, eth0 when there is a NIC), runs the
# agent, and powers the VM off when the agent exits, so that an exiting agent is a clean QEMU exit.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root

mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
mount -t tmpfs -o mode=0755 tmpfs /run
mount -t tmpfs -o mode=1777 tmpfs /tmp

# The host may name the guest with vmlet.hostname=NAME on the kernel command line. Dotted parameters
# are left to modules by the kernel, so this one reaches only us, through /proc/cmdline.
name=vmlet-guest
ssh=off agent=on
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    vmlet.hostname=*) name="${arg#vmlet.hostname=}" ;;
    vmlet.ssh=*) ssh="${arg#vmlet.ssh=}" ;;
    vmlet.agent=*) agent="${arg#vmlet.agent=}" ;;
  esac
done
hostname "$name"

ip link set lo up
# QEMU user networking (slirp) always hands out 10.0.2.15 with gateway 10.0.2.2 and DNS 10.0.2.3, so a
# static address saves a DHCP round trip at every boot.
if [ -e /sys/class/net/eth0 ]; then
  ip addr add 10.0.2.15/24 dev eth0 && ip link set eth0 up && ip route add default via 10.0.2.2 ||
    echo "vmlet-init: could not configure eth0" >&2
fi

# The ACPI power button (QEMU's system_powerdown: how a driver stops a guest whose agent does not answer)
# arrives as a key event (stage 1 loads button and evdev); busybox acpid runs PWRF/00000080 in its config
# dir for it, which powers off cleanly.
mkdir -p /run/acpi/PWRF
printf '#!/bin/sh\necho "vmlet-init: power button pressed; powering off" >/dev/console\nsync\npoweroff -f\n' >/run/acpi/PWRF/00000080
chmod 755 /run/acpi/PWRF/00000080
acpid -c /run/acpi -l /dev/null -p /run/acpid.pid || echo "vmlet-init: acpid did not start: no power button" >&2

# vmlet.ssh=on: a stock image's way in, for the SSH fallback (src/agent/ssh/): dropbear on port 22 with
# users admin/admin and root/root (test/guest/ssh-server.ts). An ed25519 host key is quick to make even
# under TCG, so it is made at first boot, as a real image would. vmlet.agent=off: no agent; init then
# waits for dropbear, and powers off when it exits.
ssh_pid=
if [ "$ssh" = on ]; then
  key=/etc/dropbear/dropbear_ed25519_host_key
  chown -R admin:admin /home/admin
  [ -s "$key" ] || dropbearkey -t ed25519 -f "$key" >/dev/null 2>&1 || echo "vmlet-init: dropbearkey failed" >&2
  dropbear -F -E -p 22 -r "$key" -P /run/dropbear.pid 2>/run/dropbear.log &
  ssh_pid=$!
  echo "vmlet-init: ssh server started on port 22"
fi
if [ "$agent" = off ]; then
  echo "vmlet-init: not starting the agent (vmlet.agent=off)"
  if [ -n "$ssh_pid" ]; then wait "$ssh_pid"; else while :; do sleep 3600; done; fi
  echo "vmlet-init: ssh server exited with status $?; powering off"
  sync
  poweroff -f
fi

# The console is quiet (the kernel's `quiet`), so this line is the first sign on it that the guest is up;
# drivers' tests wait for it when they do not speak the agent protocol.
echo "vmlet-init: starting the agent"
# --shutdown exit: after a shutdown request the agent exits, and this script powers off.
node /usr/lib/vmlet/agent.cjs --shutdown exit
status=$?
echo "vmlet-init: agent exited with status $status; powering off"
sync
poweroff -f
