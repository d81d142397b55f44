#!/usr/bin/env bash
# The GPU check of issue #16, for a lent GPU machine (about 15 minutes of device time; this
# script takes under 8): the CUDA-marked tests, then bench/e2e.py on CUDA (training frames/s
# at widths 2048 and 256, eager and compiled, plus evaluation cost), whose RESULTS.md section
# ("bench/e2e.py --device cuda") sits beside the CPU one.
#
# The device machine has PyTorch but no registry: fetch the other wheels here first,
#     bash bench/gpu.sh --fetch          # into .whl/ (git-ignored), for its Python 3.12
# then run there with .whl carried (device tool: carry [".whl"]):
#     bash bench/gpu.sh                  # logs and JSON under $OUT (or bench/out/gpu)
set -uo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "--fetch" ]; then
    # Everything the tests and e2e.py import, except torch (the machine's own build).
    packages=(torchrl==0.14.1 tensordict==0.14.3 gymnasium==1.4.0 mujoco==3.3.0 hydra-core
              omegaconf antlr4-python3-runtime==4.9.3 tqdm cloudpickle farama-notifications
              glfw pyopengl imageio imageio-ffmpeg sb3-contrib stable-baselines3 pytest
              pluggy iniconfig packaging orjson pyvers)
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform any -d .whl "${packages[@]}"
    ls .whl
    exit 0
fi

OUT=${OUT:-bench/out/gpu}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
    export PYTHONPATH="$PWD:/tmp/site"
else
    export PYTHONPATH="$PWD"
fi
export MUJOCO_GL=egl PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"

status=0
timeout 180 python3 -m pytest -q -p no:cacheprovider -m cuda test/test_cuda.py 2>&1 \
    | tee "$OUT/tests.log" || status=1
# One round: each compiled run compiles anew (about a minute), three rounds would not fit.
timeout 270 python3 bench/e2e.py --device cuda --widths 2048 256 --rounds 1 \
    --contestants ours ours_compiled sb3 --parts train eval --threads 4 \
    --json "$OUT/e2e.json" --write-results 2>&1 | tee "$OUT/e2e.log" || status=1
cp bench/RESULTS.md "$OUT/RESULTS.md"  # bring the new section back with the run's files
exit $status
