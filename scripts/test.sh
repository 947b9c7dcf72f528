#!/usr/bin/env bash
# The README's test command: builds the locked environments if needed, lints, builds the docs site in strict mode
# (scripts/build_docs.sh), and runs the tests in each Python environment.
#   leg 1, .venv (Python 3.10, TF 2.16, TFX 1.16): the whole suite, doctests and end-to-end tests included;
#   leg 2, .venv-modern (Python 3.12, TF 2.21, Keras 3.15, numpy 2, as Colab): every test that does not
#          need TFX, without the doctests and the end-to-end tests, then the notebook examples/quickstart.ipynb
#          (skipped when the arguments name tests, or with TFMOE_NOTEBOOK=0).
# Extra arguments go to pytest in both legs, e.g.  scripts/test.sh tests/test_moe.py
# TFMOE_LEGS picks legs from docs,tfx,modern (TFMOE_LEGS=tfx runs leg 1 only).
set -euo pipefail
cd "$(dirname "$0")/.."
legs="${TFMOE_LEGS:-docs,tfx,modern}"
status=0

if [[ ",$legs," == *",docs,"* ]]; then
  bash scripts/build_docs.sh || status=$?
fi

if [[ ",$legs," == *",tfx,"* ]]; then
  start=$(date +%s)
  bash scripts/setup_env.sh tfx
  .venv/bin/ruff check .
  echo "tfmoe: leg 1/2, .venv (Python 3.10, TF 2.16, TFX 1.16): the whole suite"
  .venv/bin/python -m pytest "$@" || status=$?
  echo "tfmoe: leg 1/2 took $(( $(date +%s) - start )) s (exit $status)"
fi

if [[ ",$legs," == *",modern,"* ]]; then
  start=$(date +%s)
  bash scripts/setup_env.sh modern
  echo "tfmoe: leg 2/2, .venv-modern (Python 3.12, TF 2.21, Keras 3.15, numpy 2): all but TFX, doctests, e2e"
  leg=0
  .venv-modern/bin/python -m pytest -o addopts="-ra --strict-markers" -m "not tfx and not e2e" "$@" || leg=$?
  selects_tests=0  # arguments that name tests (paths, node ids) run those only: no notebook then
  for arg in "$@"; do
    case "$arg" in tests*|tfmoe*|*.py|*::*) selects_tests=1 ;; esac
  done
  if [ "$leg" -eq 0 ] && [ "$selects_tests" -eq 0 ] && [ "${TFMOE_NOTEBOOK:-1}" = 1 ]; then
    .venv-modern/bin/python scripts/run_notebook.py examples/quickstart.ipynb || leg=$?
  fi
  echo "tfmoe: leg 2/2 took $(( $(date +%s) - start )) s (exit $leg)"
  [ "$leg" -eq 0 ] || status=$leg
fi
exit "$status"
