#!/usr/bin/env bash
# Checks deploy/compose.yaml and the shared-mode scrape config offline: no container engine is
# needed (none runs on the development machines or in CI).
#
#   deploy/check.sh            compose `config -q` on deploy/compose.yaml, then
#                              `promtool check config` on monitoring/prometheus/prometheus-replicas.yml
#   deploy/check.sh render     print deploy/compose.yaml as compose resolves it (YAML)
#
# Compose is `docker compose` (the v2 plugin) when the docker CLI has it, else `docker-compose`;
# when neither is there it installs Debian's docker-compose package with apt-get (sudo only
# when not root). promtool comes from monitoring/install-prometheus.sh. Safe to run again.
#
# The variables are deploy/.env.example's placeholders (DEPLOY_ENV_FILE names another file);
# compose runs with an otherwise empty environment, so a shell's values never leak in.
#
# Exit status: 0 valid, 1 invalid, 3 a checker is missing and cannot be installed here.
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(dirname "$HERE")"
COMPOSE_FILE="$HERE/compose.yaml"
SCRAPE_CONFIG="$ROOT/monitoring/prometheus/prometheus-replicas.yml"
ENV_FILE="${DEPLOY_ENV_FILE:-$HERE/.env.example}"
MODE="${1:-check}"

say() { echo "deploy-check: $*" >&2; }
die() {
    say "$*"
    exit 1
}
cannot() {
    say "$*"
    exit 3
}

case "$MODE" in
    check | render) ;;
    *) die "usage: deploy/check.sh [render]" ;;
esac

install_compose() {
    command -v apt-get >/dev/null 2>&1 \
        || cannot "no compose (docker compose or docker-compose) and apt-get is not available; install Docker Compose and run again."
    local sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null 2>&1 \
            || cannot "no compose; installing it needs root and sudo is not available. Run as root: apt-get install -y --no-install-recommends docker-compose"
        sudo="sudo"
    fi
    say "installing the docker-compose package with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update >&2 || cannot "apt-get update failed (network or apt sources?)"
    $sudo apt-get install -y --no-install-recommends docker-compose >&2 \
        || cannot "apt-get install docker-compose failed"
    command -v docker-compose >/dev/null 2>&1 \
        || cannot "the docker-compose package is installed but docker-compose is not on PATH"
}

COMPOSE=()
if command -v docker >/dev/null 2>&1 && docker compose version >/dev/null 2>&1; then
    COMPOSE=(docker compose)
else
    command -v docker-compose >/dev/null 2>&1 || install_compose
    COMPOSE=(docker-compose)
fi

[ -f "$ENV_FILE" ] || die "no variables file: $ENV_FILE"

compose() {
    # Only what the CLI itself needs from the environment; every variable comes from ENV_FILE.
    env -i PATH="$PATH" HOME="${HOME:-/tmp}" LANG=C.UTF-8 \
        "${COMPOSE[@]}" --env-file "$ENV_FILE" --project-directory "$HERE" \
        -f "$COMPOSE_FILE" --profile tuning "$@"
}

if [ "$MODE" = render ]; then
    compose config
    exit 0
fi

say "$("${COMPOSE[@]}" version 2>/dev/null | head -n 1)"
compose config -q || die "$COMPOSE_FILE is not a valid compose file (${COMPOSE[*]} config)"
say "OK: $COMPOSE_FILE"

if ! command -v promtool >/dev/null 2>&1; then
    "$ROOT/monitoring/install-prometheus.sh" >&2 || cannot "promtool is missing and could not be installed"
fi
promtool check config "$SCRAPE_CONFIG" >&2 || die "$SCRAPE_CONFIG is not a valid Prometheus config"
say "OK: $SCRAPE_CONFIG (and the rule files it names)"
