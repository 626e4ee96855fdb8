#!/bin/bash
# make fuzz: build the engine's libFuzzer targets with clang (ASan+UBSan)
# and run each for a bounded time (FUZZ_SECONDS, default 60) from a seed
# corpus.  Fails on any crash, leak, sanitizer report or timeout.
# Usage: fuzz.sh ENGINE_SRC OUTDIR
set -euo pipefail
src=$1
out=$2
secs=${FUZZ_SECONDS:-60}
command -v clang++ >/dev/null || { echo "fuzz: needs clang (make deps)" >&2; exit 1; }
CC=clang CXX=clang++ cmake -S "$src" -B "$out" -DCRIUSEC_FUZZ=ON -DCRIUSEC_TESTS=OFF \
	-DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$out" -j"$(nproc)"
mkdir -p "$out/corpus"
"$out/criusec-fuzz-seeds" "$out/corpus"
"$out/criusec-fuzz-trust-seeds" "$out/corpus/trust"
# Names have no generator: a few real patterns and attacks to start from.
mkdir -p "$out/corpus/names"
printf 'core-%%u.img\0core-1.img' >"$out/corpus/names/core"
printf 'ghost-file-%%x.img\0ghost-file-1f.img' >"$out/corpus/names/ghost"
printf '%%s\0../fifo' >"$out/corpus/names/dotdot"
for t in fuzz_stream_open fuzz_header_import fuzz_grant fuzz_trust fuzz_names fuzz_decompress; do
	case $t in
	fuzz_stream_open) c="$out/corpus/stream" ;;
	fuzz_header_import) c="$out/corpus/header" ;;
	fuzz_grant) c="$out/corpus/grant" ;;
	fuzz_trust) c="$out/corpus/trust" ;;
	fuzz_names) c="$out/corpus/names" ;;
	fuzz_decompress) c="$out/corpus/decompress" ;;
	esac
	mkdir -p "$c" "$out/artifacts"
	echo "== $t: ${secs}s"
	"$out/$t" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 \
		-artifact_prefix="$out/artifacts/$t-" "$c" 2>&1 | tail -3
done
echo "fuzz: no crash, leak or hang"
