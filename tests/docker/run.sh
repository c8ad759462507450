#!/usr/bin/env bash
# The docker topology test: builds the FROM-scratch images (scripts/build-images), then runs
# tests/docker with pytest from the peers' venv (tests/peers/run.sh creates it).
#   tests/docker/run.sh [extra pytest args...]
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
venv="$repo/.venv"
if ! docker info >/dev/null 2>&1; then
  echo "tests/docker: the Docker engine is not reachable (docker info failed)" >&2
  exit 2
fi
if ! command -v docker-compose >/dev/null; then
  echo "tests/docker: installing Debian's docker-compose" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose >/dev/null
fi
if [[ ! -x "$venv/bin/python" ]]; then
  echo "tests/docker: $venv is missing; run tests/peers/run.sh first (it creates the venv)" >&2
  exit 2
fi
"$repo/scripts/build-images"
cd "$repo"
exec "$venv/bin/python" -m pytest tests/docker -q -p no:cacheprovider "$@"
