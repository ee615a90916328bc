#!/usr/bin/env bash
# Run HERE (a machine that reaches PyPI), before `bash bench/gpu/run.sh` on the GPU machine.
#
# The GPU machine's image has torch, CuPy, numba and pytest but not the peers; this downloads
# their wheels (pure Python, no dependencies: torch, torchvision, matplotlib, tqdm are in the
# image) into bench/gpu/wheels/, which run.sh installs there with --no-index. Versions are the
# ones the `test` extra in pyproject.toml pins. The folder ignores itself (a `*` .gitignore):
# the wheels are never committed, so a device call must name it in `carry`.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
[ -x ../../.venv/bin/python ] && PY=${PYTHON:-../../.venv/bin/python}
mkdir -p wheels
printf '*\n' > wheels/.gitignore
rm -f wheels/*.whl
"$PY" -m pip download -q --no-deps --only-binary=:all: -d wheels zennit==0.5.1 captum==0.9.0
ls -l wheels/*.whl
