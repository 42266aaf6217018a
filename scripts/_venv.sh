# Sourced by scripts/*: create or update the project's virtualenv (.venv) from uv.lock.
# Installs are reproducible: `uv sync --locked` installs exactly what uv.lock names and fails
# when uv.lock does not match pyproject.toml (update it deliberately: `uv lock --upgrade`, then
# the suite). uv itself comes from PyPI into .cache/uv when the machine has none.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"
SOCKETIO_CLIENT_VERSION=4.8.1
UV_VERSION=0.13.9

find_uv() {
  if command -v uv >/dev/null 2>&1; then
    UV="$(command -v uv)"
    return 0
  fi
  local tools="$ROOT/.cache/uv"
  if [ ! -x "$tools/bin/uv" ]; then
    echo "==> installing uv $UV_VERSION (from PyPI, into .cache/uv)"
    "$PYTHON" -m venv "$tools"
    "$tools/bin/python" -m pip install --quiet "uv==$UV_VERSION"
  fi
  UV="$tools/bin/uv"
}

# ensure_venv "extra,extra": the locked dependencies plus those extras. Extras installed by an
# earlier script stay (--inexact): scripts/serve after scripts/test removes nothing.
ensure_venv() {
  local extras="$1"
  if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "Python >= 3.11 is required (found $("$PYTHON" --version 2>&1)); set PYTHON=..." >&2
    exit 1
  fi
  local stamp="$VENV/.installed" wanted="${extras//,/ }"
  if [ -f "$stamp" ] && [ ! "$ROOT/uv.lock" -nt "$stamp" ] && [ ! "$ROOT/pyproject.toml" -nt "$stamp" ]; then
    local have missing=0 extra
    have="$(cat "$stamp")"
    for extra in $wanted; do
      case " $have " in *" $extra "*) ;; *) missing=1 ;; esac
    done
    [ "$missing" = 0 ] && return 0
  fi
  find_uv
  local args=(sync --locked --inexact --quiet --python "$PYTHON")
  for extra in $wanted; do args+=(--extra "$extra"); done
  echo "==> installing the locked dependencies${extras:+ with extras [$extras]} into $VENV"
  (cd "$ROOT" && UV_PROJECT_ENVIRONMENT="$VENV" "$UV" "${args[@]}")
  local previous=""
  [ -f "$stamp" ] && [ ! "$ROOT/uv.lock" -nt "$stamp" ] && previous="$(cat "$stamp")"
  printf '%s\n' $previous $wanted | sort -u | paste -sd' ' - >"$stamp"
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

# The system binaries the tests and the chaos run start (apt-get installs them when run as root).
need_system_binaries() {
  local missing=()
  command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
  command -v redis-cli >/dev/null 2>&1 || missing+=(redis-tools)  # creates the test Redis Cluster
  command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
  command -v node >/dev/null 2>&1 || missing+=(nodejs)
  command -v npm >/dev/null 2>&1 || missing+=(npm)
  command -v chromium >/dev/null 2>&1 || missing+=(chromium)  # the demo page in a real browser
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "==> installing ${missing[*]} with apt-get"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "Missing system packages: ${missing[*]}. Install them (e.g. sudo apt-get install ${missing[*]}) and re-run." >&2
    exit 1
  fi
}
