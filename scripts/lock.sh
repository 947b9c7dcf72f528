#!/usr/bin/env bash
# Regenerates both lock files (Linux x86-64, glibc 2.36):
#   requirements.lock         from requirements.in         (Python 3.10: TF 2.16, TFX 1.16)
#   requirements-modern.lock  from requirements-modern.in  (Python 3.12: TF 2.21, Keras 3.15, numpy 2)
#   requirements-docs.lock    from requirements-docs.in    (Python 3.12: mkdocs, the docs site)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_find_python.sh
ensure_uv
"$UV" pip compile requirements.in \
  --python-version 3.10 --python-platform x86_64-manylinux_2_36 \
  --generate-hashes --custom-compile-command "bash scripts/lock.sh" \
  -o requirements.lock
"$UV" pip compile requirements-modern.in \
  --python-version 3.12 --python-platform x86_64-manylinux_2_36 \
  --generate-hashes --custom-compile-command "bash scripts/lock.sh" \
  -o requirements-modern.lock
"$UV" pip compile requirements-docs.in \
  --python-version 3.12 --python-platform x86_64-manylinux_2_36 \
  --generate-hashes --custom-compile-command "bash scripts/lock.sh" \
  -o requirements-docs.lock
