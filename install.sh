#!/usr/bin/env bash
# Installs coar into the current Python environment, with its compiled extension built
# against the torch it will run with. Safe to run again (it skips nothing, but pip does).
#
#   COAR_TORCH  pip requirement(s) for torch; default: the release this project is tested on
#   COAR_CUDA   0/1 forces the CUDA kernel off/on (default: on when a CUDA toolkit and a CUDA torch exist)
#   CUDA_HOME   the CUDA toolkit (default: /usr/local/cuda when it exists)
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python}

# shellcheck disable=SC2086
$PY -m pip install --quiet ${COAR_TORCH:-torch==2.14.1 torchvision==0.29.1}
if [ -z "${CUDA_HOME:-}" ] && [ -d /usr/local/cuda ]; then
  export CUDA_HOME=/usr/local/cuda
fi
# No build isolation: an isolated build would compile against a different torch. The editable
# install puts this folder on the Python path (editable_mode=compat) rather than an import hook:
# from a folder that holds a clone named coar, Python would take the clone's root for a namespace
# package before asking a hook, and `import coar` would find no coar.open (tests/test_import.py).
$PY -m pip install --quiet setuptools wheel
$PY -m pip install --quiet --no-build-isolation --use-pep517 --config-settings editable_mode=compat -e ".[test]"
$PY -c "import coar.ops as o; print('coar installed; mask op backend:', o.backend('cpu'), '(cpu)')"
