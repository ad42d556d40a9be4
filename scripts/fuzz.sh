#!/usr/bin/env bash
# Runs every cargo-fuzz target for a bounded number of executions (CI) and fails on a finding.
#   scripts/fuzz.sh [RUNS]        default RUNS=200000 per target; WSRPC_FUZZ_TARGETS to pick.
# New interesting inputs go to a scratch corpus, not the committed seeds; a crashing input is
# copied to fuzz/regressions/<target>/ so `cargo test` replays it once it is fixed.
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:-200000}"
if ! command -v cargo-fuzz >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi
targets="${WSRPC_FUZZ_TARGETS:-$(cd fuzz/fuzz_targets && ls ./*.rs | sed 's|^\./||; s|\.rs$||' | tr '\n' ' ')}"
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
status=0
for t in $targets; do
  mkdir -p "$scratch/$t" "fuzz/corpus/$t"
  echo "fuzz: $t, $runs runs"
  log="$scratch/$t.log"
  start=$(date +%s.%N)
  if (cd fuzz && cargo fuzz run -s none "$t" "$scratch/$t" "corpus/$t" -- \
        -runs="$runs" -max_len=4096 -timeout=10 -artifact_prefix="$scratch/$t-" >"$log" 2>&1); then
    rate=$(awk -v s="$start" -v e="$(date +%s.%N)" -v r="$runs" 'BEGIN { printf "%d", r / (e - s) }')
    echo "fuzz: $t clean: $(grep -E '^Done' "$log" | tail -1) (~$rate exec/s including startup)"
  else
    status=1
    echo "fuzz: FINDING in $t"
    tail -40 "$log"
    mkdir -p "fuzz/regressions/$t"
    for a in "$scratch/$t"-*; do
      [ -e "$a" ] && cp "$a" "fuzz/regressions/$t/" && echo "fuzz: saved $(basename "$a") to fuzz/regressions/$t/"
    done
  fi
done
exit $status
