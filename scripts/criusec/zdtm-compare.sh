#!/bin/bash
# Compare two ZDTM runs test by test (make zdtm-full-pre on the host against
# make test-vm VM_LAYERS=zdtm-full-pre in the VM, Documentation/mem-tracking.md).
#   zdtm-compare.sh A B [LABEL-A LABEL-B]
# A and B are zdtm's TAP reports (criu-testreport.tap) or, for a run that
# did not finish, its output (the "Test NAME PASS", "Test NAME FAIL at" and
# "Skipping NAME" lines).  Prints each run's counts, the tests whose result
# differs among those both runs reached, and with -v every test's pair of
# results ("-": not reached).
set -eu -o pipefail
verbose=0 rest=0
case ${1:-} in
-v) verbose=1; shift ;;
-r) rest=1; shift ;;
esac
[ $# -ge 2 ] || { echo "usage: zdtm-compare.sh [-v|-r] A B [LABEL-A LABEL-B]" >&2; exit 2; }
la=${3:-$1} lb=${4:-$2}

results() { # FILE -> "NAME pass|fail|skip" lines, one per test
	awk '
		/^ok [0-9]+ - .* # SKIP/ { print $4, "skip"; next }
		/^ok [0-9]+ - /           { print $4, "pass"; next }
		/^not ok [0-9]+ - /       { print $5, "fail"; next }
		# zdtm.py centres these in = or #, none when the line is longer
		# than 80 (a FAIL at a long make command): " Test NAME FAIL at".
		/^=* Test [^ ]+ PASS =*$/ { print $1 == "Test" ? $2 : $3, "pass"; next }
		/^#* Test [^ ]+ FAIL at / { print $1 == "Test" ? $2 : $3, "fail"; next }
		/^Skipping [^ ]+ \(/      { print $2, "skip"; next }
	' "$1" | sort -u -k1,1
}

a=$(mktemp) b=$(mktemp)
trap 'rm -f "$a" "$b"' EXIT
results "$1" >"$a"
results "$2" >"$b"
if [ "$rest" = 1 ]; then
	grep -F '# SKIP manual run only' "$1" | awk '{print $4}' | sort -u >"$b.manual" || true
	cut -d' ' -f1 "$b" | sort -u | sort -m - "$b.manual" | sort -u >"$b.done"
	cut -d' ' -f1 "$a" | comm -23 - "$b.done"
	rm -f "$b.manual" "$b.done"
	exit 0
fi
counts() { # LABEL FILE
	echo "$1: $(grep -c ' pass$' "$2" || true) passed, $(grep -c ' fail$' "$2" || true) failed," \
		"$(grep -c ' skip$' "$2" || true) skipped ($(wc -l <"$2") tests)"
}
counts "$la" "$a"
counts "$lb" "$b"
join -a1 -a2 -e - -o 0,1.2,2.2 "$a" "$b" | awk -v la="$la" -v lb="$lb" -v v="$verbose" '
	v { print $1, $2, $3 }
	$2 == "-" { ona++; next }
	$3 == "-" { onb++; next }
	{ both++ }
	$2 != $3 { d[++n] = sprintf("  %s: %s %s, %s %s", $1, la, $2, lb, $3) }
	END {
		if (ona) print ona + 0 " tests only in " lb
		if (onb) print onb + 0 " tests only in " la
		print n + 0 " of the " both + 0 " tests in both differ" (n ? ":" : "")
		for (i = 1; i <= n; i++) print d[i]
	}'
