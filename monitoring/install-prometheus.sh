#!/usr/bin/env bash
# Installs Prometheus and promtool (Debian/Ubuntu package "prometheus") unless promtool is
# already on PATH.  Safe to run again: it does nothing when promtool is present.
#
#   monitoring/install-prometheus.sh
#
# The Debian package also registers a prometheus systemd service; this script neither
# configures nor starts it: run `prometheus --config.file=monitoring/prometheus/prometheus.yml`.
set -euo pipefail

die() {
    echo "install-prometheus: $*" >&2
    exit 1
}

if command -v promtool >/dev/null 2>&1; then
    echo "install-prometheus: promtool already installed: $(command -v promtool)"
    promtool --version 2>&1 | head -n 1
    exit 0
fi

command -v apt-get >/dev/null 2>&1 \
    || die "promtool is missing and apt-get is not available; install Prometheus from https://prometheus.io/download/ and put promtool on PATH."

if [ "$(id -u)" -eq 0 ]; then
    SUDO=""
elif command -v sudo >/dev/null 2>&1; then
    SUDO="sudo"
else
    die "promtool is missing; installing it needs root and sudo is not available. Run as root: apt-get install -y --no-install-recommends prometheus"
fi

echo "install-prometheus: installing the prometheus package (promtool) with apt-get"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update \
    || die "apt-get update failed (network or apt sources?)"
$SUDO apt-get install -y --no-install-recommends prometheus \
    || die "apt-get install prometheus failed"

command -v promtool >/dev/null 2>&1 \
    || die "the prometheus package is installed but promtool is not on PATH"
echo "install-prometheus: installed $(command -v promtool)"
promtool --version 2>&1 | head -n 1
