#!/usr/bin/env bash
# Make the py4DSTEM virtualenv used by benchmarks/virtual_throughput.py (contender "py4dstem").
#
#   bash benchmarks/setup_py4dstem_env.sh            # -> benchmarks/envs/py4dstem (gitignored)
#   bash benchmarks/setup_py4dstem_env.sh /some/dir  # elsewhere (pass --py4dstem-python DIR/bin/python)
#
# py4DSTEM 0.14.18 (latest on PyPI) declares numpy<2; its default dependencies need no torch,
# CUDA or TensorFlow (those are only in its extras, which we do not install). About 750 MB.
# Its own environment keeps numpy<2 away from the project's .venv (numpy 2.x).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ENV_DIR="${1:-$HERE/envs/py4dstem}"
PYTHON="${PYTHON:-python3}"

"$PYTHON" -m venv "$ENV_DIR"
"$ENV_DIR/bin/pip" install --disable-pip-version-check "py4dstem==0.14.18" "numpy<2"
"$ENV_DIR/bin/python" -c "import numpy, h5py, py4DSTEM; print('py4DSTEM', py4DSTEM.__version__, '| numpy', numpy.__version__, '| h5py', h5py.__version__)"
