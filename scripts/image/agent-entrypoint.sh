#!/bin/sh
# Entrypoint of the agent image: make kernel headers available to bcc for the running kernel, then exec
# retina-exporter with the container's arguments (default: `agent`).
#
# bcc compiles against /lib/modules/$(uname -r)/build. When that is missing (a node without headers, or no host
# mount of /lib/modules and /usr/src), link the Debian headers shipped in the image there, as scripts/setup.sh does
# on a host: only uapi and stable types are used; internal struct offsets come from BTF. When /lib/modules cannot
# be written (read-only root filesystem without an emptyDir on /lib/modules, or a read-only host mount without
# headers), point bcc at the image's headers with BCC_KERNEL_SOURCE instead.
set -eu
kver=$(uname -r)
build=/lib/modules/$kver/build
if [ ! -e "$build/include/generated" ] && [ -z "${BCC_KERNEL_SOURCE:-}" ]; then
  hdr=$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -n1)
  common=$(ls -d /usr/src/linux-headers-*-common 2>/dev/null | sort -V | tail -n1)
  if [ -z "$hdr" ] || [ -z "$common" ]; then
    echo "retina-entrypoint: no kernel headers at $build and none under /usr/src" >&2
  elif mkdir -p "/lib/modules/$kver" 2>/dev/null && ln -sfn "$hdr" "$build" 2>/dev/null \
      && ln -sfn "$common" "/lib/modules/$kver/source" 2>/dev/null; then
    echo "retina-entrypoint: linked $hdr (+ $common) as headers for kernel $kver" >&2
  else
    export BCC_KERNEL_SOURCE="$hdr"
    echo "retina-entrypoint: /lib/modules is read-only; BCC_KERNEL_SOURCE=$hdr for kernel $kver" >&2
  fi
fi
exec retina-exporter "$@"
