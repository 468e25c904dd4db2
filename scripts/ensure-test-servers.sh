#!/usr/bin/env bash
# Install what the integration tests start when it is missing: InfluxDB 1.x, Mosquitto, socat
# (a pseudo-terminal pair stands in for a Modbus RTU serial line) and Chromium (the browser tests
# drive Debian's /usr/bin/chromium through Playwright; no browser is downloaded).
# Tests start their own instances on free loopback ports; nothing here starts a service.
set -euo pipefail

missing=()
command -v influxd >/dev/null 2>&1 || missing+=(influxdb)
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || missing+=(mosquitto)
command -v socat >/dev/null 2>&1 || missing+=(socat)
[ -x /usr/bin/chromium ] || missing+=(chromium)
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
  echo "The integration tests need: ${missing[*]}." >&2
  echo "Install them with: sudo apt-get install -y ${missing[*]}   (then re-run make test)" >&2
  exit 1
fi

echo "installing ${missing[*]} (Debian packages) for the integration tests"
# Keep the packages from starting system services: the tests run their own instances.
created_policy=0
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
  chmod +x /usr/sbin/policy-rc.d
  created_policy=1
fi
trap '[ "$created_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d' EXIT
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
