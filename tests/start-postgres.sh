#!/usr/bin/env bash
# Makes a PostgreSQL answer on 127.0.0.1:5432 for the shared-mode tests: starts the machine's
# clusters when they are down, installs Debian's package (and creates a cluster) when there
# is none. Safe to run again. Where nothing can be started the shared-mode tests skip, each
# saying why (tests/pg.py).
#
#   tests/start-postgres.sh
set -euo pipefail

say() { echo "start-postgres: $*"; }

if [ "$(id -u)" -eq 0 ]; then SUDO=""; elif command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else SUDO="none"; fi

answers() { pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; }

if command -v pg_isready >/dev/null 2>&1 && answers; then
    say "PostgreSQL answers on 127.0.0.1:5432"
    exit 0
fi

if ! command -v pg_lsclusters >/dev/null 2>&1; then
    if [ "$SUDO" = "none" ] || ! command -v apt-get >/dev/null 2>&1; then
        say "no PostgreSQL here and no way to install one (needs root and apt-get): shared-mode tests will skip"
        exit 0
    fi
    say "installing Debian's postgresql package"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -q || true
    $SUDO apt-get install -y -q --no-install-recommends postgresql \
        || { say "apt-get install postgresql failed: shared-mode tests will skip"; exit 0; }
fi

if [ -z "$(pg_lsclusters -h 2>/dev/null)" ]; then
    version=$(ls /usr/lib/postgresql | sort -V | tail -n 1)
    say "creating cluster $version/main"
    $SUDO pg_createcluster "$version" main -- --auth=trust >/dev/null
fi

pg_lsclusters -h | while read -r version cluster port status _; do
    if [ "$status" != "online" ]; then
        say "starting cluster $version/$cluster (port $port)"
        $SUDO pg_ctlcluster --skip-systemctl-redirect "$version" "$cluster" start || true
    fi
done

for _ in $(seq 1 30); do
    if answers; then say "PostgreSQL answers on 127.0.0.1:5432"; exit 0; fi
    sleep 1
done
say "PostgreSQL did not answer on 127.0.0.1:5432 within 30 s: shared-mode tests will skip"
