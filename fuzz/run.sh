#!/usr/bin/env bash
# fuzz/run.sh SECONDS [TARGET...]: builds metaclf's fuzz targets with libFuzzer on *stable* Rust
# and runs each for SECONDS (all seven when none is named), one after the other.
#
# Why not `cargo fuzz`: it needs nightly (-Zsanitizer), and this project builds on stable only.
# libFuzzer itself (the libfuzzer-sys crate) works on stable when the code is compiled with
# LLVM's SanitizerCoverage through the stable `-C passes` / `-C llvm-args` options, which is all
# cargo-fuzz does besides the sanitizer; `--target` keeps those flags off build scripts and
# proc macros. No AddressSanitizer (nightly only): the targets are safe Rust, so what is sought
# is panics, aborts, overflow (overflow checks on), timeouts and runaway memory.
#
# Corpora grow in fuzz/corpus/<target>/ (seeded from fuzz/seeds/), crashes land in
# fuzz/artifacts/<target>/, logs in fuzz/logs/. A crash found becomes a regression test: put
# its input under tests/fuzz_regressions/<target>/ (tests/fuzz_regressions.rs runs them all).
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:?usage: fuzz/run.sh SECONDS [TARGET...]}
shift
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(idx config safetensors features_csv image_folder npy onnx)
fi
host=$(rustc -vV | sed -n 's/^host: //p')
export RUSTFLAGS="--cfg fuzzing -Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares -Cdebug-assertions -Coverflow-checks"
cargo build --release --target "$host" --bins
mkdir -p logs
scratch=$(mktemp -d /dev/shm/metaclf-fuzz.XXXXXX 2>/dev/null || mktemp -d)
trap 'rm -rf "$scratch"' EXIT
status=0
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t" "artifacts/$t"
  case $t in
    safetensors | image_folder | onnx) max_len=65536 ;;
    *) max_len=16384 ;;
  esac
  echo "== $t: ${secs}s"
  if FUZZ_SCRATCH="$scratch" CANDLE_NUM_THREADS=1 "target/$host/release/$t" "corpus/$t" "seeds/$t" \
      -max_total_time="$secs" -max_len="$max_len" -timeout=10 -rss_limit_mb=4096 \
      -artifact_prefix="artifacts/$t/" -print_final_stats=1 >"logs/$t.log" 2>&1; then
    result=ok
  else
    result="FAILED (see fuzz/logs/$t.log and fuzz/artifacts/$t/)"
    status=1
  fi
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "logs/$t.log" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "logs/$t.log" | tail -1)
  cov=$(grep -o 'cov: [0-9]*' "logs/$t.log" | tail -1)
  echo "$t: ${execs:-?} executions (${rate:-?}/s), $cov, corpus $(ls "corpus/$t" | wc -l) files: $result"
done
exit $status
