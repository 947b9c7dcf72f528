#!/usr/bin/env bash
# The README's test command: builds the locked environments if needed, lints, builds the docs site in strict mode
# (scripts/build_docs.sh), and runs the tests in each Python environment.
#   leg 1, .venv (Python 3.10, TF 2.16, TFX 1.16): the whole suite, doctests and end-to-end tests included;
#   leg 2, .venv-modern (Python 3.12, TF 2.21, Keras 3.15, numpy 2, as Colab): every test that does not
#          need TFX, without the doctests and the end-to-end tests, then the notebook examples/quickstart.ipynb
#          (skipped when the arguments name tests, or with TFMOE_NOTEBOOK=0).
# Extra arguments go to pytest in both legs, e.g.  scripts/test.sh tests/test_moe.py
# TFMOE_LEGS picks legs from docs,tfx,modern (TFMOE_LEGS=tfx runs leg 1 only).
# TFMOE_PARALLEL_LEGS=1 (what CI sets) builds both environments, then runs the two test legs side by side, each
# leg's output printed when it ends: much of a test's time is single-threaded tracing, so two legs keep two cores
# busier than one.
set -euo pipefail
cd "$(dirname "$0")/.."
legs="${TFMOE_LEGS:-docs,tfx,modern}"
status=0

leg_tfx() {
  local start status=0
  start=$(date +%s)
  bash scripts/setup_env.sh tfx
  .venv/bin/ruff check .
  echo "tfmoe: leg 1/2, .venv (Python 3.10, TF 2.16, TFX 1.16): the whole suite"
  .venv/bin/python -m pytest "$@" || status=$?
  echo "tfmoe: leg 1/2 took $(( $(date +%s) - start )) s (exit $status)"
  return "$status"
}

leg_modern() {
  local start leg=0 selects_tests=0 arg
  start=$(date +%s)
  bash scripts/setup_env.sh modern
  echo "tfmoe: leg 2/2, .venv-modern (Python 3.12, TF 2.21, Keras 3.15, numpy 2): all but TFX, doctests, e2e"
  .venv-modern/bin/python -m pytest -o addopts="-ra --strict-markers" -m "not tfx and not e2e" "$@" || leg=$?
  for arg in "$@"; do  # arguments that name tests (paths, node ids) run those only: no notebook then
    case "$arg" in tests*|tfmoe*|*.py|*::*) selects_tests=1 ;; esac
  done
  if [ "$leg" -eq 0 ] && [ "$selects_tests" -eq 0 ] && [ "${TFMOE_NOTEBOOK:-1}" = 1 ]; then
    .venv-modern/bin/python scripts/run_notebook.py examples/quickstart.ipynb || leg=$?
  fi
  echo "tfmoe: leg 2/2 took $(( $(date +%s) - start )) s (exit $leg)"
  return "$leg"
}

if [[ ",$legs," == *",docs,"* ]]; then
  bash scripts/build_docs.sh || status=$?
fi

run_tfx=0 run_modern=0
[[ ",$legs," == *",tfx,"* ]] && run_tfx=1
[[ ",$legs," == *",modern,"* ]] && run_modern=1
if [ "${TFMOE_PARALLEL_LEGS:-0}" = 1 ] && [ "$run_tfx" = 1 ] && [ "$run_modern" = 1 ]; then
  bash scripts/setup_env.sh tfx  # one environment build at a time (both install tfmoe in editable mode here)
  bash scripts/setup_env.sh modern
  logs=$(mktemp -d)
  leg_tfx "$@" > "$logs/tfx.log" 2>&1 & tfx_pid=$!
  leg_modern "$@" > "$logs/modern.log" 2>&1 & modern_pid=$!
  wait "$tfx_pid" || status=$?
  cat "$logs/tfx.log"
  wait "$modern_pid" || status=$?
  cat "$logs/modern.log"
  rm -rf "$logs"
else
  if [ "$run_tfx" = 1 ]; then leg_tfx "$@" || status=$?; fi
  if [ "$run_modern" = 1 ]; then leg_modern "$@" || status=$?; fi
fi
exit "$status"
