#!/usr/bin/env bash
# Fuzz smoke test: build every target once, then run each for SECONDS (default 20).
#
#   fuzz/smoke.sh [SECONDS]
#
# Exits non-zero if any target crashes (the input lands in fuzz/artifacts/<target>/).
# New corpus entries go to a scratch directory, so the committed seeds under
# fuzz/corpus/<target>/ are read but never added to.
#
# Environment: FUZZ_SANITIZER (default address; `none` runs faster).
set -euo pipefail

seconds="${1:-20}"
sanitizer="${FUZZ_SANITIZER:-address}"
targets=(frame_decoder header_block session inflate_differential websocket_decoder)

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here/.."

# cargo fuzz needs -Z flags; this toolchain is stable, so allow them explicitly.
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

build_flags=(--sanitizer "$sanitizer" --debug-assertions)

start=$(date +%s)
cargo fuzz build "${build_flags[@]}"
echo "build: $(($(date +%s) - start)) s"

scratch="$(mktemp -d "${TMPDIR:-/tmp}/spdy-fuzz.XXXXXX")"
trap 'rm -rf "$scratch"' EXIT

failed=()
for target in "${targets[@]}"; do
    mkdir -p "$scratch/$target"
    log="$scratch/$target.log"
    t0=$(date +%s)
    status=0
    # The scratch directory comes first: libFuzzer writes new inputs to the first one.
    cargo fuzz run "${build_flags[@]}" "$target" "$scratch/$target" "fuzz/corpus/$target" -- \
        -max_total_time="$seconds" -rss_limit_mb=512 -malloc_limit_mb=256 -timeout=10 \
        -print_final_stats=1 >"$log" 2>&1 || status=$?
    elapsed=$(($(date +%s) - t0))
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || true)
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 || true)
    if [ "$status" -eq 0 ]; then
        printf '%-22s ok     %4d s  %10s runs  %s\n' "$target" "$elapsed" "${runs:-?}" "$cov"
    else
        printf '%-22s FAILED %4d s (exit %d)\n' "$target" "$elapsed" "$status"
        grep -E -A30 'panicked|ERROR: libFuzzer|SUMMARY|Test unit written' "$log" | head -60 || tail -40 "$log"
        failed+=("$target")
    fi
done

if [ "${#failed[@]}" -gt 0 ]; then
    echo "fuzz smoke failed: ${failed[*]}"
    exit 1
fi
echo "fuzz smoke passed"
