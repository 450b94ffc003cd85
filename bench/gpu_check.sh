#!/usr/bin/env bash
# The CUDA path and the GPU benchmarks in one run, on a machine with an NVIDIA GPU: the CUDA tests
# (tests/test_cuda.py: scoring, heatmaps, input checks, Score All and training on the GPU against the
# CPU), then bench/inference.py and bench/training.py on CUDA. Results go to OUTDIR.
#
#     bash bench/gpu_check.sh [OUTDIR]
#
# Uses the python3 on the PATH as it is (its torch, torchvision, numpy, scikit-learn, safetensors,
# pydicom). Where that python lacks pydicom and the machine has no package index, put pydicom's
# wheel in .whl/ beside this checkout's pyproject.toml (ignored by git) and it is installed from there. The real images are read from
# ../shared/data, or from shared/data inside the checkout where only a copy travelled with it.
set -u
OUTDIR=$(realpath -m "${1:-${OUT:-/tmp/gpu_check}}")
mkdir -p "$OUTDIR"
cd "$(dirname "$0")/.."
if ! python3 -c "import pydicom" 2>/dev/null; then
    if ! ls .whl/*.whl >/dev/null 2>&1; then
        echo "gpu_check: this python has no pydicom: pip install pydicom, or put its wheel in .whl/" >&2
        exit 1
    fi
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 MPLBACKEND=Agg
if [ ! -e ../shared/data ] && [ -d shared/data ]; then
    mkdir -p ../shared && ln -s "$PWD/shared/data" ../shared/data
fi
{ nvidia-smi; python3 -c "import torch, torchvision, numpy, sklearn; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'torchvision', torchvision.__version__, 'numpy', numpy.__version__, 'sklearn', sklearn.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'NO CUDA')"; } 2>&1 | tee "$OUTDIR/machine.txt"
python3 -m pytest -q -p no:cacheprovider -o addopts="" tests/test_cuda.py -rs --durations=10 2>&1 | tee "$OUTDIR/test_cuda.txt"
tests_rc=${PIPESTATUS[0]}
python3 bench/inference.py --devices cuda --images 256 --batch 32 2>&1 | tee "$OUTDIR/bench_inference.txt"
# 1,024 images at batch 64: 16 batches an epoch, so 8 loader workers all have work
python3 bench/training.py --devices cuda --images 1024 --batch 64 --steps 48 --workers 1,8 2>&1 | tee "$OUTDIR/bench_training.txt"
echo "tests rc=$tests_rc"
exit "$tests_rc"
