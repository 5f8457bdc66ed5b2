#!/usr/bin/env bash
# The one GPU run of issue 11, from the repository root of a copy carrying .gpu/ (benchmarks/gpu_prepare.sh
# builds it): install the carried wheels, put the carried ExifTool on PATH, then benchmarks/gpu_check.py.
# Arguments go to gpu_check.py (defaults: --device cuda --dtype fp16 --batches 32,64). Output is also in
# $OUT/gpu.txt, line by line as measured.
#
#   bash benchmarks/gpu_check.sh                       # on the GPU machine
#   PYTHON=.venv/bin/python bash benchmarks/gpu_check.sh --device cpu --dtype bf16 --batches 2,4 \
#       --photos 8 --seed-photos 2 --new-tokens 3      # trying it out on a CPU
set -u
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
export OUT=${OUT:-$(mktemp -d /tmp/phototag-gpu-out.XXXXXX)}
mkdir -p "$OUT"
report="$OUT/gpu.txt"
: >"$report"
say() { echo "$*" | tee -a "$report"; }

[ -d .gpu ] || { say "gpu_check: no .gpu folder here: run benchmarks/gpu_prepare.sh and carry .gpu"; exit 2; }
site=${SITE:-$(mktemp -d /tmp/phototag-site.XXXXXX)}
if ! "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" \
    "${WHEELS:-.gpu/whl}"/*.whl >"$OUT/pip.txt" 2>&1; then
    say "gpu_check: installing the carried wheels failed: $(tail -n 1 "$OUT/pip.txt")"
    exit 2
fi
export PYTHONPATH="$site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
chmod +x .gpu/exiftool/exiftool 2>/dev/null  # in case the copy lost the bit
export PATH="$PWD/.gpu/exiftool:$PATH"
export PHOTOTAG_CORPUS="$PWD/.gpu/photos"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

say "host        $(uname -srm), $(nproc) cores, perl $(perl -e 'print $^V' 2>/dev/null || echo MISSING)"
if command -v nvidia-smi >/dev/null; then
    say "gpu         $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | head -n 1)"
fi
if ! exiftool -ver >/dev/null 2>"$OUT/exiftool.txt"; then
    say "EXIFTOOL CANNOT RUN HERE: $(head -n 1 "$OUT/exiftool.txt") (the phototag lines will be skipped)"
fi
"$python" benchmarks/gpu_check.py "$@"
status=$?
say "gpu_check.py exit status $status"
exit $status
