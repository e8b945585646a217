#!/usr/bin/env bash
# One-time (idempotent) machine and project set-up for retina-exporter.
# Runs as root on Debian 12: Debian packages, kernel headers for bcc, tracefs/bpffs, the venv, protobuf code.
set -euo pipefail
cd "$(dirname "$0")/.."

need_pkgs=(python3-bpfcc bpfcc-tools bpftool iproute2 iputils-ping iperf3 tcpdump python3-venv ethtool nftables iptables prometheus)
missing=()
for p in "${need_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
kver=$(uname -r)
if ! dpkg-query -W -f='${Status}' "linux-headers-$kver" 2>/dev/null | grep -q "install ok installed"; then
  if [ ! -e "/lib/modules/$kver/build/include/generated" ]; then
    missing+=("headers")
  fi
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  pkgs=("${need_pkgs[@]}")
  if apt-cache show "linux-headers-$kver" >/dev/null 2>&1; then
    pkgs+=("linux-headers-$kver")
  else
    pkgs+=(linux-headers-amd64)
  fi
  apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
fi

# bcc compiles against /lib/modules/$(uname -r)/{build,source}. When Debian has no headers for the running
# kernel, link the distribution's: only uapi and stable types are used; internal struct offsets come from BTF.
if [ ! -e "/lib/modules/$kver/build/include/generated" ]; then
  hdr=$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -n1)
  common=$(ls -d /usr/src/linux-headers-*-common 2>/dev/null | sort -V | tail -n1)
  if [ -z "$hdr" ] || [ -z "$common" ]; then
    echo "setup: no kernel headers under /usr/src; install linux-headers-amd64" >&2; exit 2
  fi
  mkdir -p "/lib/modules/$kver"
  ln -sfn "$hdr" "/lib/modules/$kver/build"
  ln -sfn "$common" "/lib/modules/$kver/source"
  echo "setup: linked $hdr (+ $common) as headers for kernel $kver"
fi

# tracefs and bpffs (a DaemonSet gets them through host mounts).
mountpoint -q /sys/kernel/tracing 2>/dev/null || mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null || true
mountpoint -q /sys/fs/bpf 2>/dev/null || mount -t bpf bpf /sys/fs/bpf 2>/dev/null || true

# The venv must see the system Python's bcc module.
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c "import bcc" 2>/dev/null; then
  rm -rf .venv
  /usr/bin/python3 -m venv --system-site-packages .venv
fi
stamp=.venv/.installed-$(sha1sum pyproject.toml | cut -c1-12)
if [ ! -f "$stamp" ]; then
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e '.[test]'
  rm -f .venv/.installed-*; touch "$stamp"
fi
.venv/bin/python -m retina_core.proto.generate
echo "setup: ok"
