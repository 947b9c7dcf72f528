# Sourced by the setup scripts: finds a Python of a given minor version and a pinned uv.
UV_VERSION="0.13.9"

# find_python 3.10 -> sets PYTHON to an interpreter of that version ($TFMOE_PYTHON310 / $TFMOE_PYTHON312 first).
find_python() {
  local want="$1" candidate override
  override="TFMOE_PYTHON${want//./}"
  for candidate in "${!override:-}" "$(command -v "python$want" 2>/dev/null || true)" \
      "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"$want"*/bin/python"$want" /usr/bin/python"$want" /usr/local/bin/python"$want"; do
    if [ -n "$candidate" ] && [ -x "$candidate" ] && \
        "$candidate" -c "import sys; assert '%d.%d' % sys.version_info[:2] == '$want'" 2>/dev/null; then
      PYTHON="$candidate"
      return 0
    fi
  done
  echo "error: Python $want not found (tried \$$override, python$want on PATH, pyenv versions). Install Python $want or set $override." >&2
  return 1
}

# Installs uv into .tools/ (a tiny bootstrap venv, from the package registry) unless present.
ensure_uv() {
  UV=".tools/bin/uv"
  if [ -x "$UV" ] && [ "$("$UV" --version | awk '{print $2}')" = "$UV_VERSION" ]; then
    return 0
  fi
  find_python 3.10 || find_python 3.12
  rm -rf .tools
  "$PYTHON" -m venv .tools
  .tools/bin/python -m pip install --quiet --disable-pip-version-check "uv==$UV_VERSION"
}

# env_spec tfx|modern|docs -> VENV, LOCK, PYVER of that environment.
env_spec() {
  case "$1" in
    tfx) VENV=".venv"; LOCK="requirements.lock"; PYVER="3.10" ;;
    modern) VENV=".venv-modern"; LOCK="requirements-modern.lock"; PYVER="3.12" ;;
    docs) VENV=".venv-docs"; LOCK="requirements-docs.lock"; PYVER="3.12" ;;
    *) echo "error: unknown environment '$1' (expected tfx, modern or docs)" >&2; return 1 ;;
  esac
}
