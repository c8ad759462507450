#!/usr/bin/env bash
# Run the independent Python OCPP peers against a real ocpp-node binary.
#   tests/peers/run.sh [extra pytest args...]
# Env: OCPP_NODE_BIN (default <repo>/target/release/ocpp-node), PYTHON (default python3),
#      CHROMIUM (default: chromium on PATH, installed from Debian when missing and run as root).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
venv="$repo/.venv"
req="$here/requirements.txt"
python="${PYTHON:-python3}"

bin="${OCPP_NODE_BIN:-$repo/target/release/ocpp-node}"
if [[ ! -x "$bin" ]]; then
  echo "tests/peers: ocpp-node binary not found (or not executable) at: $bin" >&2
  echo "tests/peers: build it with 'cargo build --release -p ocpp-node' or set OCPP_NODE_BIN" >&2
  exit 2
fi
export OCPP_NODE_BIN="$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")"

# promtool, from Debian's prometheus package, lints the node's /metrics in test_metrics.py.
if ! command -v promtool >/dev/null; then
  echo "tests/peers: installing Debian's prometheus package (for promtool)" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi

if [[ ! -x "$venv/bin/python" ]]; then
  echo "tests/peers: creating $venv" >&2
  "$python" -m venv "$venv"
fi

stamp="$venv/.peers-requirements.sha256"
want="$( (sha256sum "$req"; "$venv/bin/python" --version) | sha256sum | cut -d' ' -f1)"
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
  echo "tests/peers: installing $req into $venv" >&2
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$req"
  echo "$want" > "$stamp"
fi

# test_status_page.py renders the admin status page in headless Chromium (Debian's package).
if [[ -z "${CHROMIUM:-}" ]] && ! command -v chromium >/dev/null; then
  if [[ "$(id -u)" -eq 0 ]] && command -v apt-get >/dev/null; then
    echo "tests/peers: installing chromium" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-dejavu-core >/dev/null
  else
    echo "tests/peers: no chromium (apt-get install chromium, or set CHROMIUM): test_status_page will fail" >&2
  fi
fi

cd "$repo"
exec "$venv/bin/python" -m pytest tests/peers -q "$@"
