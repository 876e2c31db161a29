#!/bin/sh
# Installs what shoal needs on Debian. Usage: scripts/deps.sh [run|test|bench]...
#   run    FUSE, networking tools (always)
#   test   tools the test suite drives: rsync, sqlite3, python3, pjdfstest and its users
#   bench  fio and GlusterFS for side-by-side runs
set -eu
want_test=0; want_bench=0
for a in "$@"; do
  case "$a" in
    run) ;;
    test) want_test=1 ;;
    bench) want_bench=1 ;;
    *) echo "deps.sh: unknown set '$a' (run, test, bench)" >&2; exit 2 ;;
  esac
done

if [ "$(id -u)" -ne 0 ]; then
  SUDO=sudo
else
  SUDO=
fi

pkgs="fuse3 iproute2 procps psmisc ca-certificates"
[ $want_test = 1 ] && pkgs="$pkgs rsync sqlite3 python3 tar attr libcap2-bin"
[ $want_bench = 1 ] && pkgs="$pkgs fio glusterfs-server"

missing=""
for p in $pkgs; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  echo "installing:$missing"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends $missing
fi

# Debian's udev rules give /dev/fuse mode 0666 so that users can mount (fusermount3);
# machines without udev may leave it root-only.
if [ "$(id -u)" -eq 0 ] && [ -c /dev/fuse ] && [ "$(stat -c %a /dev/fuse)" = "600" ]; then
  chmod 0666 /dev/fuse
fi

if [ $want_test = 1 ]; then
  tools=/var/tmp/shoal-tools
  if [ ! -x "$tools/bin/pjdfstest" ]; then
    echo "installing pjdfstest 0.2.2 into $tools"
    cargo install pjdfstest --version 0.2.2 --locked --root "$tools"
  fi
  # pjdfstest switches to these users; each needs a primary group of its own.
  id tests >/dev/null 2>&1 || $SUDO useradd --system --user-group --no-create-home --home-dir / --shell /usr/sbin/nologin tests
  id nobody >/dev/null 2>&1 || $SUDO useradd --system --no-create-home nobody
fi
