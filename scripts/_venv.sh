# Sourced by scripts/*: create or update the project's virtualenv (.venv) with the given extras.
# Re-installs only when pyproject.toml changed since the last install.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"

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
  local stamp="$VENV/.installed-$extras"
  if [ ! -f "$stamp" ] || [ "$ROOT/pyproject.toml" -nt "$stamp" ]; then
    echo "==> installing the project${extras:+ with extras [$extras]}"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    if [ -n "$extras" ]; then
      "$VENV/bin/python" -m pip install --quiet -e "$ROOT[$extras]"
    else
      "$VENV/bin/python" -m pip install --quiet -e "$ROOT"
    fi
    touch "$stamp"
  fi
}
