#!/usr/bin/env bash
# Build .gpu/ (git-ignored) in this checkout: everything benchmarks/gpu_check.sh needs on a rented GPU
# machine that can download nothing and lacks what phototag needs beyond torch and transformers.
#
#   .gpu/whl/        cp312 manylinux wheels the GPU image lacks (SQLAlchemy, greenlet, watchdog)
#   .gpu/exiftool/   Debian's ExifTool (a Perl script) with its Perl library in exiftool/lib, where the
#                    script itself looks first; it needs Perl there (the check says so if it cannot run)
#   .gpu/photos/     corpus JPEGs in the corpus's own layout (jpg/..., generated/big_4000x3000_q92.jpg),
#                    so PHOTOTAG_CORPUS=.gpu/photos serves benchmarks/throughput.py's photo list
#
# Run from anywhere, with the machine's pip able to download (here: the local wheel mirror):
#   bash benchmarks/gpu_prepare.sh [CHECKOUT]   # default: this checkout; PYTHON=... the pip, CORPUS=... the corpus
# Then name .gpu in the device run's carry list (it travels with the working tree: 64 MiB in all).
set -euo pipefail

repo=$(cd "${1:-$(dirname "$0")/..}" && pwd)
cd "$repo"
python=${PYTHON:-python3}
corpus=${CORPUS:-${PHOTOTAG_CORPUS:-$repo/../shared/corpus}}
exiftool_bin=$(command -v exiftool || true)
[ -n "$exiftool_bin" ] || { echo "gpu_prepare: exiftool is not installed here (apt-get install libimage-exiftool-perl)" >&2; exit 1; }
[ -d "$corpus/jpg" ] || { echo "gpu_prepare: no corpus at $corpus (set CORPUS=...)" >&2; exit 1; }

# ignored, so it travels only when carried (and never gets committed)
exclude=$(git rev-parse --git-path info/exclude)
mkdir -p "$(dirname "$exclude")"
grep -qx '/.gpu/' "$exclude" 2>/dev/null || echo '/.gpu/' >>"$exclude"

rm -rf .gpu
mkdir -p .gpu/whl .gpu/exiftool/lib .gpu/photos

# Wheels for the GPU machine's Python 3.12. Versions: what this project is tested with. SQLAlchemy
# needs typing-extensions (there already); greenlet only for asyncio, carried anyway since it is small.
"$python" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
    -d .gpu/whl "sqlalchemy==${SQLALCHEMY_VERSION:-2.1.9}" "greenlet==${GREENLET_VERSION:-3.5.6}" \
    "watchdog==${WATCHDOG_VERSION:-7.1.0}"

# ExifTool: the script looks for its modules in lib/ beside itself before the system's. Only the
# Image::ExifTool tree and File::RandomAccess are ExifTool's own; the rest is Perl's (Encode, Storable,
# ...), which the GPU machine's perl must have (gpu_check.sh tries a real write and says so if not).
perl_lib=$(perl -MImage::ExifTool -e 'print $INC{"Image/ExifTool.pm"} =~ s{/Image/ExifTool\.pm$}{}r')
cp "$exiftool_bin" .gpu/exiftool/exiftool
chmod 755 .gpu/exiftool/exiftool
cp -r "$perl_lib/Image" .gpu/exiftool/lib/
mkdir -p .gpu/exiftool/lib/File
cp "$perl_lib/File/RandomAccess.pm" .gpu/exiftool/lib/File/
# prove the copy runs from its own lib (an empty PERL5LIB and no system copy on the path it reads)
.gpu/exiftool/exiftool -ver >/dev/null

# Photos: every corpus JPEG under jpg/ (small camera files of many makes) and the 12 MP generated JPEG.
cp -r "$corpus/jpg" .gpu/photos/jpg
mkdir -p .gpu/photos/generated
cp "$corpus/generated/big_4000x3000_q92.jpg" .gpu/photos/generated/
chmod -R u+w .gpu/photos

du -sh .gpu/whl .gpu/exiftool .gpu/photos .gpu
echo "gpu_prepare: .gpu is ready; carry it: carry=[\".gpu\"]"
