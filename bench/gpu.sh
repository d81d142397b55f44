#!/usr/bin/env bash
# The GPU check of issue #16, for a lent GPU machine (about 15 minutes of device time; this
# script stays near 10 minutes, each stage under its own time limit): the CUDA-marked tests,
# bench/e2e.py's training frames/s on CUDA (compile + CUDA graphs, sb3-contrib and fp32 eager,
# one run each, width 2048), and bench/update.py on CUDA. Every run writes its own
# JSON dump, so a stage that fails or runs out of time loses only its own numbers. Render
# the sections here afterwards:
#     python bench/e2e.py --device cuda --results-from <its e2e-*.json dumps>
#     python bench/update.py --results-from <its update.json>
#
# The device machine has PyTorch but no registry: fetch the other wheels here first,
#     bash bench/gpu.sh --fetch          # into .whl/ (git-ignored), for its Python 3.12
# then run there with .whl carried (device tool: carry [".whl"]):
#     bash bench/gpu.sh                  # logs and JSON under $OUT (or bench/out/gpu)
set -uo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "--fetch" ]; then
    # Everything the tests and e2e.py import that the machine's image lacks (its python3 has
    # torch, numpy, pytest, tqdm, cloudpickle, imageio, pandas, matplotlib), torch excepted.
    packages=(torchrl==0.14.1 tensordict==0.14.3 pyvers==0.2.3 orjson gymnasium==1.4.0
              farama-notifications mujoco==3.3.0 glfw pyopengl hydra-core==1.3.8
              omegaconf==2.3.1 sb3-contrib==2.9.2 stable-baselines3==2.9.2)
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform any -d .whl "${packages[@]}" || exit 1
    # omegaconf's parser runtime is published as a source archive only: build its (pure
    # Python) wheel here.
    python3 -m pip wheel -q --no-deps -w .whl antlr4-python3-runtime==4.9.3 || exit 1
    ls .whl
    exit 0
fi

OUT=${OUT:-bench/out/gpu}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
    [ -d /tmp/site/torchrl ] || python3 -m pip install -q --no-index --no-deps --no-compile \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH="$PWD:/tmp/site"
else
    export PYTHONPATH="$PWD"
fi
# No rendering: the image has no libEGL, and mujoco imports its GL backend unless told not to.
export MUJOCO_GL=disable PYTHONUNBUFFERED=1
log="$OUT/gpu.log"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$log"
# Fail fast (seconds, not the whole lease) when the stack does not import or the env is missing.
timeout 120 python3 - <<'PY' 2>&1 | tee -a "$log" || exit 2
import gymnasium as gym, sb3_contrib, tensordict, torch, torchrl
import torchrl_crossq
print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name())
print("torchrl", torchrl.__version__, "tensordict", tensordict.__version__)
gym.make("HalfCheetah-v5").reset(seed=0)
PY

status=0
stage() {  # stage SECONDS NAME COMMAND...: one stage under its own limit, its output in the log
    local limit=$1 name=$2
    shift 2
    echo "## $name ($(date +%T), limit ${limit} s)" | tee -a "$log"
    if ! timeout "$limit" "$@" 2>&1 | tee -a "$log"; then
        echo "## $name FAILED" | tee -a "$log"
        status=1
    fi
}
e2e() {  # e2e LIMIT WIDTH CONTESTANT: one training run, its own dump
    stage "$1" "e2e width $2 $3" python3 bench/e2e.py --device cuda --widths "$2" \
        --contestants "$3" --parts train --rounds 1 --threads 4 --warmup-frames 200 \
        --measured-frames 1000 --log-interval 200 --out "$OUT/runs" --json "$OUT/e2e-w$2-$3.json"
}
# Most wanted first: the whole call may be cut at its limit (what is under $OUT comes back).
# Limits from the first run (2026-11-30, H200 machine, torch 2.11): a cold torch.compile of the
# update takes 70-100 s on its CPU; eager and sb3-contrib's updates take about 15 ms at width
# 2048, the CUDA-graph one about 7 ms. Width 256 waits for a session with time to spare.
# update.py --profile: where those 7 ms go (the matmul floor is 0.7 ms), host and kernels.
stage 200 tests python3 -m pytest -q -p no:cacheprovider -p no:logging -m cuda test/test_cuda.py
e2e 180 2048 ours_cudagraphs
e2e 75 2048 sb3
e2e 75 2048 ours
stage 130 update python3 bench/update.py --device cuda --widths 2048 --cudagraphs --profile \
    --reps 3 --sample-seconds 0.5 --json "$OUT/update.json"
# The training runs' own logs, small, in one file (the device tool brings back 8 files at most).
tar -czf "$OUT/runs.tgz" -C "$OUT" --exclude='*.pt' runs 2>/dev/null && rm -rf "$OUT/runs"
exit $status
