# Sourced by scripts/*: create or update the project's virtualenv (.venv) with the given extras.
# One install marker for every script: it records which extras the last install had, so
# scripts/serve after scripts/test (whose install is a superset) installs nothing, and
# everything is re-installed when pyproject.toml changes.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"
SOCKETIO_CLIENT_VERSION=4.8.1

ensure_venv() {
  local extras="$1"
  if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "Python >= 3.11 is required (found $("$PYTHON" --version 2>&1)); set PYTHON=..." >&2
    exit 1
  fi
  if [ ! -x "$VENV/bin/python" ]; then
    echo "==> creating virtualenv in $VENV"
    "$PYTHON" -m venv "$VENV"
  fi
  local stamp="$VENV/.installed" have="" wanted
  if [ -f "$stamp" ] && [ ! "$ROOT/pyproject.toml" -nt "$stamp" ]; then
    have="$(cat "$stamp")"
    local missing=0
    for wanted in ${extras//,/ }; do
      case ",$have," in *",$wanted,"*) ;; *) missing=1 ;; esac
    done
    [ "$missing" = 0 ] && return 0
  fi
  # Keep what the last install had: serve after test must not drop the test extras.
  local all
  all="$(printf '%s\n' ${have//,/ } ${extras//,/ } | sort -u | paste -sd, -)"
  echo "==> installing the project${all:+ with extras [$all]}"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  "$VENV/bin/python" -m pip install --quiet -e "$ROOT${all:+[$all]}"
  printf '%s' "$all" >"$stamp"
}

# The socket.io-client browser bundle the pages load when the CDN is out of reach (offline
# machines, strict proxies): installed from the npm registry into .cache/ (outside git) when
# npm is available; without it the pages use the CDN.
ensure_client_bundle() {
  local prefix="$ROOT/.cache/socket.io-client"
  [ -f "$prefix/node_modules/socket.io-client/dist/socket.io.min.js" ] && return 0
  if ! command -v npm >/dev/null 2>&1; then
    echo "==> npm not found: the pages will load socket.io-client from its CDN"
    return 0
  fi
  echo "==> installing socket.io-client $SOCKETIO_CLIENT_VERSION for the pages (npm, into .cache/)"
  mkdir -p "$prefix"
  npm install --prefix "$prefix" --no-audit --no-fund --no-save --loglevel=error \
    "socket.io-client@$SOCKETIO_CLIENT_VERSION" >/dev/null ||
    echo "==> could not install socket.io-client: the pages will load it from its CDN"
}
