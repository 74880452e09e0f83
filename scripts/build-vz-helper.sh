#!/bin/sh
# Builds and signs vmlet-vz, the Virtualization.framework helper of the vz driver (macOS 13+ on Apple
# Silicon, Xcode command line tools). Ad-hoc signed by default; VMLET_VZ_SIGN_IDENTITY names a signing
# identity ("Developer ID Application: ..."). The com.apple.security.virtualization entitlement is what
# lets the process create VMs; without it VZVirtualMachine refuses to start.
# UNTESTED here: vmlet is developed on Linux; this script has not been run on a Mac.
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
pkg="$root/native/vz"
if [ "$(uname -s)" != Darwin ] || [ "$(uname -m)" != arm64 ]; then
  echo "build-vz-helper: needs macOS on Apple Silicon (this is $(uname -s)/$(uname -m))" >&2
  exit 1
fi
command -v swift >/dev/null || { echo "build-vz-helper: swift not found (xcode-select --install)" >&2; exit 1; }
swift build -c release --package-path "$pkg"
bin="$pkg/.build/release/vmlet-vz"
codesign --entitlements "$pkg/vmlet-vz.entitlements" --force -s "${VMLET_VZ_SIGN_IDENTITY:--}" "$bin"
codesign -d --entitlements - --xml "$bin" | grep -q com.apple.security.virtualization \
  || { echo "build-vz-helper: $bin lacks the virtualization entitlement after signing" >&2; exit 1; }
echo "$bin"
