#!/bin/bash
# ab_matmul.sh TYPE TOKENS BIN [BIN ...] - A/B of matmul_stream builds on a shared machine.
#
# Runs each BIN (benchmarks/matmul_stream.c built against different trees' libg4.a, see its
# header) 5 times, interleaved, on a 100000 x 2048 matrix of TYPE (ggml type id: 2 Q4_0, 6 Q5_0,
# 8 Q8_0, 12 Q4_K, 14 Q6_K) times TOKENS activation rows, and prints each build's best GB/s
# per CPU second of the thread (what other processes on the machine disturb least).
set -euo pipefail
ty=$1; T=$2; shift 2
declare -A best
for _ in 1 2 3 4 5; do
    for b in "$@"; do
        v=$("$b" "$ty" 100000 6 "$T" | tail -1 | sed 's/.*per CPU second \([0-9.]*\).*/\1/')
        best[$b]=$(python3 -c "print(max(${best[$b]:-0}, $v))")
    done
done
printf 'type %s, %s token(s):' "$ty" "$T"
for b in "$@"; do printf ' %s=%s' "$(basename "$b")" "${best[$b]}"; done
echo ' GB/s per CPU second (best of 5)'
