#!/usr/bin/env bash
# Installs what ingot needs on Debian, only where it is missing.
#   deploy/install-deps.sh          both browser engines and the virtual display: Debian's
#                                   `chromium` (full Chromium: `--engine chromium` and headful
#                                   sessions), `chromium-headless-shell` (the lean headless
#                                   shell, the default engine of headless sessions) and `xvfb`
#                                   (the X server each headful session, `"headless": false`,
#                                   gets its own display from)
#   deploy/install-deps.sh --tests  also Node.js and npm (end-to-end tests), Python's venv
#                                   and pip (the Python end-to-end tests' virtual environment,
#                                   tests/py/.venv), PostgreSQL (tests of --database-url),
#                                   tinyproxy (tests of proxyUrl with credentials) and
#                                   Prometheus (promtool and a real scrape in tests/it/deploy.rs)
#                                   and nftables and iproute2 (the partition tests' namespaces)
# Rust cannot be installed from Debian's packages in a recent enough version; if cargo is
# missing this says how to get it and stops.
set -euo pipefail

want_tests=0
[ "${1:-}" = "--tests" ] && want_tests=1

missing=()
[ -x /usr/lib/chromium/chromium ] || [ -x /usr/bin/chromium ] || missing+=(chromium)
[ -x /usr/lib/chromium/chromium-headless-shell ] || [ -x /usr/bin/chromium-headless-shell ] \
  || missing+=(chromium-headless-shell)
command -v Xvfb >/dev/null 2>&1 || [ -x /usr/bin/Xvfb ] || missing+=(xvfb)
if [ "$want_tests" = 1 ]; then
  command -v node >/dev/null 2>&1 || missing+=(nodejs)
  command -v npm >/dev/null 2>&1 || missing+=(npm)
  # `python3 -m venv` needs the venv and ensurepip modules (Debian ships them apart from
  # python3), and the venv's pip installs the pinned packages of tests/py.
  if ! command -v python3 >/dev/null 2>&1; then
    missing+=(python3 python3-venv python3-pip)
  elif ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
    missing+=(python3-venv python3-pip)
  fi
  # PostgreSQL for the tests of --database-url; the tests start their own servers, as the
  # unprivileged postgres account, so the package's own service is not needed.
  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
  # A proxy that wants Basic authentication, for the tests of proxyUrl with credentials;
  # the tests start their own on loopback.
  command -v tinyproxy >/dev/null 2>&1 || missing+=(tinyproxy)
  # nftables and iproute2 (`ip netns`, veth pairs) for the partition tests
  # (tests/it/partition.rs), which cut nodes apart inside network namespaces.
  command -v nft >/dev/null 2>&1 || [ -x /usr/sbin/nft ] || missing+=(nftables)
  command -v ip >/dev/null 2>&1 || [ -x /usr/sbin/ip ] || [ -x /sbin/ip ] || missing+=(iproute2)
fi

if [ ${#missing[@]} -gt 0 ]; then
  echo "install-deps: installing ${missing[*]} from Debian's packages" >&2
  if [ "$(id -u)" = 0 ]; then
    apt_get=(apt-get)
  elif command -v sudo >/dev/null 2>&1; then
    apt_get=(sudo apt-get)
  else
    echo "install-deps: need root to run: apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
  "${apt_get[@]}" update -qq
  DEBIAN_FRONTEND=noninteractive "${apt_get[@]}" install -y -qq "${missing[@]}" >/dev/null
fi

# Prometheus alone (no node exporter), and never started as a service: tests start their
# own on loopback.
if [ "$want_tests" = 1 ] && ! command -v promtool >/dev/null 2>&1; then
  echo "install-deps: installing prometheus from Debian's packages" >&2
  if [ "$(id -u)" = 0 ]; then apt_get=(apt-get); else apt_get=(sudo apt-get); fi
  "${apt_get[@]}" update -qq
  DEBIAN_FRONTEND=noninteractive "${apt_get[@]}" install -y -qq --no-install-recommends prometheus >/dev/null
fi

# The sandbox: each session's browser runs as its own uid with Chromium's own sandbox, which
# needs unprivileged user namespaces (Debian's setuid helper chromium-sandbox is not needed).
# Where AppArmor restricts them (Ubuntu 23.10+), a profile lets Chromium create them.
if [ "$(cat /proc/sys/kernel/apparmor_restrict_unprivileged_userns 2>/dev/null)" = 1 ]; then
  if command -v apparmor_parser >/dev/null 2>&1 && [ -d /etc/apparmor.d ]; then
    echo "install-deps: AppArmor restricts user namespaces; installing deploy/apparmor/ingot-chromium" >&2
    if [ "$(id -u)" = 0 ]; then sudo=(); else sudo=(sudo); fi
    "${sudo[@]}" install -m 0644 "$(dirname "$0")/apparmor/ingot-chromium" /etc/apparmor.d/ingot-chromium
    "${sudo[@]}" apparmor_parser -r /etc/apparmor.d/ingot-chromium
  else
    echo "install-deps: AppArmor restricts user namespaces and apparmor_parser is missing;" \
      "Chromium's sandbox will not start (see deploy/README.md)" >&2
  fi
fi
if [ "$(cat /proc/sys/user/max_user_namespaces 2>/dev/null)" = 0 ] \
  || [ "$(cat /proc/sys/kernel/unprivileged_userns_clone 2>/dev/null)" = 0 ]; then
  echo "install-deps: unprivileged user namespaces are off (user.max_user_namespaces or" \
    "kernel.unprivileged_userns_clone); Chromium's sandbox needs them (see deploy/README.md)" >&2
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "install-deps: cargo not found. Install Rust (1.89 or newer) with rustup: https://rustup.rs" >&2
  exit 1
fi
