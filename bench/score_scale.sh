#!/usr/bin/env bash
# bench/score_scale.sh RUN [N_GENERATED] [N_PNG]: images/s and peak RSS of `metaclf score` and
# `metaclf features` on N_GENERATED generated images (uniform noise, default 1,000,000) and on
# a folder of N_PNG PNG files (MNIST test images, default 100,000), measured with
# /usr/bin/time -v. Needs a finished run with a trust model and a release build.
set -euo pipefail
run=${1:?usage: bench/score_scale.sh RUN [N_GENERATED] [N_PNG]}
ngen=${2:-1000000}
npng=${3:-100000}
bin=${METACLF:-target/release/metaclf}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
measure() { # name images command...
  local name=$1 n=$2
  shift 2
  /usr/bin/time -v "$@" >"$work/out.txt" 2>"$work/time.txt"
  local secs rss
  secs=$(sed -n 's/^\s*Elapsed (wall clock) time (h:mm:ss or m:ss): //p' "$work/time.txt" |
    awk -F: '{ if (NF == 3) print $1*3600 + $2*60 + $3; else print $1*60 + $2 }')
  rss=$(sed -n 's/^\s*Maximum resident set size (kbytes): //p' "$work/time.txt")
  printf '%-34s %9d images %8.1f s %9.0f images/s  peak RSS %6.0f MB\n' \
    "$name" "$n" "$secs" "$(echo "$n / $secs" | bc -l)" "$(echo "$rss / 1024" | bc -l)"
}
echo "machine: $(nproc) cores; run: $run"
measure "score, generated" "$ngen" "$bin" score --run "$run" --data uniform-noise --count "$ngen" --out "$work/gen"
measure "features, generated" "$ngen" "$bin" features --run "$run" --data uniform-noise --count "$ngen" --out "$work/gen.csv"
rm -rf "$work/gen" "$work/gen.csv"
src=$(ls data/mnist/t10k-images-idx3-ubyte* | head -1)
python3 "$(dirname "$0")/make_png_folder.py" "$src" "$work/png" "$npng"
measure "score, PNG folder" "$npng" "$bin" score --run "$run" --data "folder:$work/png" --out "$work/pngs"
measure "features, PNG folder" "$npng" "$bin" features --run "$run" --data "folder:$work/png" --out "$work/png.csv"
