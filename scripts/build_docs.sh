#!/usr/bin/env bash
# Builds the docs site (mkdocs.yml -> site/) in strict mode: a broken link, a missing page or snippet, or a
# docstring mkdocstrings cannot render fails the build. Builds .venv-docs from requirements-docs.lock if needed.
#   bash scripts/build_docs.sh           build into site/
#   bash scripts/build_docs.sh serve     preview on http://127.0.0.1:8000
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh docs
export NO_MKDOCS_2_WARNING=1
if [ "${1:-build}" = serve ]; then
  exec .venv-docs/bin/mkdocs serve
fi
.venv-docs/bin/mkdocs build --strict --quiet
echo "tfmoe: docs site built in site/"
