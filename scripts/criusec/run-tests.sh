#!/bin/bash
# make test: the three layers, each with its own count, then the total.
# Exits non-zero if any layer fails or runs no test.
# Usage: run-tests.sh SRC ENGINE_BUILD
set -u -o pipefail
src=$1
engine=$2
repo=$(cd "$(dirname "$0")/../.." && pwd)
export PATH="/usr/sbin:/usr/bin:/sbin:/bin:$PATH"
log=$(mktemp -d /tmp/criusec-tests.XXXXXX)
tp=0 tf=0 ts=0 bad=""

count() { # FILE REGEX -> first number matched, or 0
	n=$(grep -oE "$2" "$1" | tail -1 | grep -oE '[0-9]+' | head -1)
	echo "${n:-0}"
}

layer() { # NAME PASSED FAILED SKIPPED RC
	echo "== $1: $2 passed, $3 failed, $4 skipped"
	tp=$((tp + $2)) tf=$((tf + $3)) ts=$((ts + $4))
	if [ "$5" -ne 0 ] || [ "$3" -ne 0 ] || [ "$2" -eq 0 ]; then bad="$bad $1"; fi
}

echo "== unit tests (CTest/GoogleTest)"
ctest --test-dir "$engine" --output-on-failure 2>&1 | tee "$log/unit"
rc=$?
total=$(count "$log/unit" 'out of [0-9]+')
failed=$(count "$log/unit" '[0-9]+ tests failed')
skipped=$(grep -c 'Skipped' "$log/unit" || true)
layer unit $((total - failed - skipped)) "$failed" "$skipped" "$rc"

echo "== integration tests (pytest)"
(cd "$repo/test/criusec" && CRIU="$src/criu/criu" /usr/bin/python3 -m pytest -v -rs -p no:cacheprovider) 2>&1 | tee "$log/integration"
rc=$?
layer integration "$(count "$log/integration" '[0-9]+ passed')" \
	"$(( $(count "$log/integration" '[0-9]+ failed') + $(count "$log/integration" '[0-9]+ errors?') ))" \
	"$(count "$log/integration" '[0-9]+ skipped')" "$rc"

zdtm_layer() { # NAME [zdtm.py options]
	local name=$1
	shift
	echo "== $name (CRIU's own tests, test/criusec/zdtm-smoke.list)"
	"$repo/scripts/criusec/zdtm.sh" "$src" smoke "$@" 2>&1 | tee "$log/$name"
	rc=$?
	layer "$name" "$(count "$log/$name" '[0-9]+ passed,')" "$(count "$log/$name" '[0-9]+ failed,')" \
		"$(count "$log/$name" '[0-9]+ skipped$')" "$rc"
}
zdtm_layer zdtm-smoke
touch "$log/stamp"
zdtm_layer zdtm-smoke-encrypt --encrypt --keep-img always
# Images compressed before they are encrypted (kept too: crit-recode reads them).
zdtm_layer zdtm-smoke-encrypt-compress --encrypt --compress --keep-img always
# Pages through a criu page-server (which needs --tls under --encrypt).
ZDTM_EXCLUDE="zdtm/static/shm zdtm/static/shm-unaligned" \
ZDTM_EXCLUDE_WHY="fails with --page-server --tls in upstream CRIU too: the IPC namespace is dumped by a forked child, whose TLS records the page server cannot decrypt" \
	zdtm_layer zdtm-smoke-encrypt-page-server --encrypt --page-server --tls

# ZDTM's CRIT check (CRIU's CI runs it after its tests) on the encrypted
# checkpoints the layers above kept (compressed ones too): decode, encode, re-encrypt.
echo "== crit-recode (test/crit-recode.py on the encrypted ZDTM dumps)"
dirs=$(find "$src/test/dump" -name cipher.img -newer "$log/stamp" -printf '%h\n' 2>/dev/null | sort)
n=$(echo "$dirs" | grep -c . || true)
# shellcheck disable=SC2086
(cd "$src" && PYTHONPATH="$src/lib" /usr/bin/python3 test/crit-recode.py $dirs) 2>&1 | tee "$log/recode"
rc=$?
if [ "$n" -gt 0 ] && [ "$rc" -eq 0 ] && grep -q '^PASS$' "$log/recode"; then
	layer crit-recode "$n" 0 0 0
else
	layer crit-recode 0 1 0 1
fi

rm -rf "$log"
echo "criusec tests: $tp passed, $tf failed, $ts skipped"
if [ -n "$bad" ]; then
	echo "FAILED layers:$bad" >&2
	exit 1
fi
