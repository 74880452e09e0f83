#!/bin/busybox sh
# Stage 1 of the vmlet test guest: /init of its initramfs, run by the kernel as PID 1. It loads the
# modules the root disk and the agent channel need (Debian's cloud kernel has virtio as modules), mounts
# the ext4 root disk and hands over to the disk's /sbin/init. Any failure is said on the console and
# powers the VM off, so the host sees QEMU exit at once instead of a guest that hangs.
/bin/busybox --install -s /bin
export PATH=/bin

fail() {
  echo "vmlet-init: $*" >&2
  echo "vmlet-init: boot failed; powering off" >&2
  poweroff -f
}

mount -t devtmpfs devtmpfs /dev
mount -t proc proc /proc
mount -t sysfs sysfs /sys

# build.ts wrote the modules in dependency order: insmod, unlike modprobe, loads exactly one file.
while read -r module; do
  insmod "/lib/modules/$module.ko" || fail "cannot load kernel module $module"
done < /etc/modules.order

root=/dev/vda
# virtio_blk adds the disk while insmod runs; the device node can lag behind by a moment.
tries=0
while [ ! -b "$root" ] && [ "$tries" -lt 50 ]; do
  sleep 0.1
  tries=$((tries + 1))
done
[ -b "$root" ] || fail "no root disk $root (is a virtio disk attached?)"
mount -t ext4 -o rw "$root" /newroot || fail "cannot mount $root as ext4: not a vmlet test guest disk?"
[ -x /newroot/sbin/init ] || fail "the root disk has no /sbin/init"

mount --move /dev /newroot/dev
mount --move /proc /newroot/proc
mount --move /sys /newroot/sys
exec switch_root /newroot /sbin/init
