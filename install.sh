#!/bin/sh
# Builds shoal and installs it: /usr/local/bin/shoal and the mount helper /sbin/mount.shoal
# (so that `mount -t shoal HOST:VOLUME DIR` and fstab lines work). Installs the Debian
# packages it needs first.
set -eu
cd "$(dirname "$0")"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/shoal-target}"
scripts/deps.sh run
cargo build --release --locked -p shoal
if [ "$(id -u)" -eq 0 ]; then SUDO=; else SUDO=sudo; fi
$SUDO install -m 0755 "$CARGO_TARGET_DIR/release/shoal" /usr/local/bin/shoal
$SUDO ln -sf /usr/local/bin/shoal /sbin/mount.shoal
echo "installed /usr/local/bin/shoal and /sbin/mount.shoal"
