#!/usr/bin/env bash
# Installs the Debian packages the test suite uses for real (skips what is already there).
set -euo pipefail
want=(chromium ceph-mon ceph-osd radosgw openjdk-17-jre-headless wrk)
missing=()
for p in "${want[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
[ ${#missing[@]} -eq 0 ] && exit 0
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
