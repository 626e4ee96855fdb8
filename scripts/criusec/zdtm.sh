#!/bin/sh
# Run CRIU's own test suite (ZDTM) against the built tree.
#   zdtm.sh SRC smoke [zdtm.py run options...]   the list in test/criusec/zdtm-smoke.list
#   zdtm.sh SRC chain [zdtm.py run options...]   the list in test/criusec/zdtm-chain.list
#   zdtm.sh SRC full  [zdtm.py run options...]   every test (long)
#   zdtm.sh SRC FILE  [zdtm.py run options...]   the tests listed in FILE (a path)
# ZDTM_EXCLUDE="test ..." (with ZDTM_EXCLUDE_WHY) leaves tests of a list
# out; each is reported, and counted as skipped.  ZDTM_REPORT_DIR=DIR keeps
# zdtm's report there (its TAP file, each failed test's output) instead of
# deleting it.
# Prints "zdtm: N passed, N failed, N skipped" from zdtm's TAP report; exits
# non-zero when a test failed or none ran.
set -eu
src=$1
set_name=$2
shift 2
# A list's path, before the cd below.
case $set_name in */*) set_name=$(realpath "$set_name") ;; esac
export PATH="/usr/sbin:/usr/bin:/sbin:/bin:$PATH"
die() { echo "zdtm: $*" >&2; exit 1; }

# What ZDTM needs on this kernel (BRIEF.md section 1): lazy pages through
# userfaultfd, and big pipes for remote lazy pages.
sysctl -q -w vm.unprivileged_userfaultfd=1 || true
sysctl -q -w fs.pipe-max-size=4194304 || true

cd "$src/test"
make -s -C zdtm -j"$(nproc)" >zdtm-build.log 2>&1 || { tail -30 zdtm-build.log; die "building the ZDTM tests failed"; }

if [ -n "${ZDTM_REPORT_DIR:-}" ]; then
	report=$ZDTM_REPORT_DIR
	rm -rf "$report" && mkdir -p "$report"
else
	report=$(mktemp -d /tmp/zdtm-report.XXXXXX)
fi
case "$set_name" in
full)	sel="-a" ;;
*)	# -t per test: --from would turn --keep-going (and so the report) off.
	file=$set_name
	case $file in */*) ;; *) file=criusec/zdtm-$set_name.list ;; esac
	[ -f "$file" ] || die "no list test/$file"
	list=$(grep -v '^[[:space:]]*\(#\|$\)' "$file")
	for t in ${ZDTM_EXCLUDE:-}; do
		echo "zdtm: skip $t: ${ZDTM_EXCLUDE_WHY:-excluded}"
		list=$(echo "$list" | grep -vx "$t")
		excluded=$((${excluded:-0} + 1))
	done
	sel=$(echo "$list" | sed 's/^/-t /' | tr '\n' ' ') ;;
esac
# Only the "uns" flavour works for most tests here: root lacks
# CAP_SYS_RESOURCE, so h/ns cannot read rlimits of tests that switch uid.
rc=0
# shellcheck disable=SC2086
/usr/bin/python3 zdtm.py run $sel -f uns -p 2 --keep-going --report "$report" "$@" || rc=$?

tap=$(find "$report" -maxdepth 1 -name 'criu-testreport*.tap' 2>/dev/null | head -1)
[ -n "$tap" ] || die "zdtm wrote no report (exit $rc): nothing ran"
skipped=$(( $(grep -c '^ok .*# SKIP' "$tap" || true) + ${excluded:-0} ))
passed=$(grep '^ok ' "$tap" | grep -vc '# SKIP' || true)
failed=$(grep -c '^not ok ' "$tap" || true)
grep '^not ok ' "$tap" | sed 's/^/zdtm: /' || true
echo "zdtm $set_name: $passed passed, $failed failed, $skipped skipped"
[ -n "${ZDTM_REPORT_DIR:-}" ] || rm -rf "$report"
# ZDTM's Makefile.inc appends what it links to the directory's .gitignore: undo that where
# the file is upstream's (test/cuda-checkpoint), or build/src looks edited to patches-export.
git -C .. diff --name-only -- 'test/*.gitignore' | xargs -r git -C .. checkout -q -- || true
[ "$passed" -gt 0 ] || die "no test passed"
[ "$failed" -eq 0 ] && [ "$rc" -eq 0 ]
