#!/usr/bin/env bash
# Installs what building and testing alexring needs on Debian: a C compiler for
# cgo, OpenBLAS, oneDNN (the CPU convolutions; a build with -tags nodnnl or
# purego does without) and libjpeg-turbo. Does nothing when they are there.
set -euo pipefail
need=()
command -v gcc >/dev/null 2>&1 || need+=(gcc libc6-dev)
if ! ldconfig -p 2>/dev/null | grep -q 'libopenblas\.so ' && ! dpkg -s libopenblas-dev >/dev/null 2>&1; then
  need+=(libopenblas-dev)
fi
if [ ! -f /usr/include/dnnl.h ]; then
  need+=(libdnnl-dev)
fi
if [ ! -f /usr/include/turbojpeg.h ]; then
  need+=(libturbojpeg0-dev)
fi
if [ ${#need[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing ${need[*]} with apt-get" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi
