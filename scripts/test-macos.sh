#!/bin/sh
# `npm run test:macos`: the vz helper conformance suite (test/unit/drivers/vz-driver.test.ts) against the
# REAL helper. Builds and signs vmlet-vz (scripts/build-vz-helper.sh), then runs the suite with
# VMLET_VZ_HELPER set to it, booting the small arm64 Linux guest in $VMLET_VZ_TEST_GUEST (a directory with
# `kernel` (an uncompressed arm64 Image), `disk.img` (raw), and optionally `initrd` and `cmdline`).
# $VMLET_VZ_TEST_MACOS_VM (optional: a Tart VM dir, ~/.tart/vms/<name>, with config.json, disk.img and
# nvram.bin) adds the two-VM-limit case, which needs macOS guests. Without a Mac this says why and fails.
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
if [ "$(uname -s)" != Darwin ] || [ "$(uname -m)" != arm64 ]; then
  echo "test:macos: runs only on macOS on Apple Silicon (this is $(uname -s)/$(uname -m)); here, npm run test:unit runs the same suite against the fake helper (test/fakes/fake-vz-helper.ts)" >&2
  exit 1
fi
if [ -z "${VMLET_VZ_TEST_GUEST:-}" ] || [ ! -f "$VMLET_VZ_TEST_GUEST/kernel" ] || [ ! -f "$VMLET_VZ_TEST_GUEST/disk.img" ]; then
  echo "test:macos: set VMLET_VZ_TEST_GUEST to a directory holding kernel (uncompressed arm64 Linux Image), disk.img (raw) and optionally initrd and cmdline; see README.md, 'On a Mac'" >&2
  exit 1
fi
helper=$(sh "$root/scripts/build-vz-helper.sh" | tail -n 1)
sh "$root/scripts/ensure-node-modules.sh"
cd "$root"
VMLET_VZ_HELPER="$helper" exec node --import tsx --test --test-concurrency=1 test/unit/drivers/vz-driver.test.ts
