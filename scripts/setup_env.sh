#!/usr/bin/env bash
# Builds an environment from nothing: the locked requirements (uv) + tfmoe in editable mode.
#   bash scripts/setup_env.sh          .venv:        Python 3.10, TF 2.16, TFX 1.16 (requirements.lock)
#   bash scripts/setup_env.sh modern   .venv-modern: Python 3.12, TF 2.21, Keras 3.15, numpy 2 (requirements-modern.lock)
#   bash scripts/setup_env.sh docs     .venv-docs:   Python 3.12, mkdocs for the docs site (requirements-docs.lock)
# Idempotent: an environment already synced to its lock file is left as it is (seconds).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_find_python.sh
env_spec "${1:-tfx}"
ensure_uv

stamp="$VENV/.tfmoe-lock-sha256"
want="$(cat "$LOCK" pyproject.toml | sha256sum | awk '{print $1}')"
if [ -x "$VENV/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi

start=$(date +%s)
find_python "$PYVER"
echo "tfmoe: building $VENV (Python $PYVER, $LOCK) ..."
[ -x "$VENV/bin/python" ] || "$UV" venv --quiet --python "$PYTHON" "$VENV"
"$UV" pip sync --quiet --python "$VENV/bin/python" "$LOCK"
if [ "${1:-tfx}" != docs ]; then  # the docs site reads tfmoe's sources; it does not import them
  "$UV" pip install --quiet --python "$VENV/bin/python" --no-deps --no-build-isolation -e .
fi
echo "$want" > "$stamp"
echo "tfmoe: $VENV ready in $(( $(date +%s) - start )) s"
