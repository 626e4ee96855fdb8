# shellcheck shell=bash disable=SC2154
# Test layers, each printing its own count, then the total and the verdict:
# sourced by run-tests.sh (make test) and vm-tests.sh (make test-vm, in the
# guest).  Needs $repo, $src and $log (a directory for the layers' output).
# A layer fails when it exits non-zero, fails a test, or passes none.
tp=0 tf=0 ts=0 bad="" failures="" since=$SECONDS

count() { # FILE REGEX -> first number matched, or 0
	n=$(grep -oE "$2" "$1" | tail -1 | grep -oE '[0-9]+' | head -1)
	echo "${n:-0}"
}

layer() { # NAME PASSED FAILED SKIPPED RC; with the seconds since the last layer
	echo "== $1: $2 passed, $3 failed, $4 skipped ($((SECONDS - since)) s)"
	since=$SECONDS
	tp=$((tp + $2)) tf=$((tf + $3)) ts=$((ts + $4))
	if [ "$5" -ne 0 ] || [ "$3" -ne 0 ] || [ "$2" -eq 0 ]; then bad="$bad $1"; fi
}

pytest_layer() { # NAME [pytest arguments], in test/criusec, on the built criu
	local name=$1 rc
	shift
	(cd "$repo/test/criusec" && CRIU="$src/criu/criu" /usr/bin/python3 -m pytest -v -rfEs -p no:cacheprovider "$@") 2>&1 | tee "$log/$name"
	rc=$?
	pytest_counts "$name" "$rc"
}

engines_layer() { # NAME [pytest arguments], in test/engines (namespaces of its own), on the built criu
	local name=$1 rc
	shift
	(cd "$repo/test/engines" && CRIUSEC_TEST_CRIU="$src/criu/criu" /usr/bin/python3 -m pytest -v -rfEs \
		-p no:cacheprovider --basetemp=/run/.criusec-engines/pytest "$@") 2>&1 | tee "$log/$name"
	rc=$?
	pytest_counts "$name" "$rc"
}

pytest_counts() { # NAME RC: the layer's line from pytest's summary in $log/NAME
	failed_names "$1" '^(FAILED|ERROR) '
	layer "$1" "$(count "$log/$1" '[0-9]+ passed')" \
		"$(( $(count "$log/$1" '[0-9]+ failed') + $(count "$log/$1" '[0-9]+ errors?') ))" \
		"$(count "$log/$1" '[0-9]+ skipped')" "$2"
}

skip_layer() { # NAME WHY: a layer that cannot run here, counted as one skip (not a failure)
	echo "== $1: 0 passed, 0 failed, 1 skipped: $2"
	since=$SECONDS
	ts=$((ts + 1))
}

zdtm_layer() { # NAME SET [zdtm.py options]: see zdtm.sh
	local name=$1 set=$2 rc
	shift 2
	echo "== $name (CRIU's own tests, test/criusec/zdtm-$set.list $*)"
	"$repo/scripts/criusec/zdtm.sh" "$src" "$set" "$@" 2>&1 | tee "$log/$name"
	rc=$?
	layer "$name" "$(count "$log/$name" '[0-9]+ passed,')" "$(count "$log/$name" '[0-9]+ failed,')" \
		"$(count "$log/$name" '[0-9]+ skipped$')" "$rc"
	failed_names "$name" '^zdtm: not ok '
}

# The failed tests' names, repeated by finish(): a CI log that keeps only
# its tail still says which test failed.
failed_names() { # NAME REGEX: the lines of $log/NAME that name a failed test
	local f
	f=$(grep -E "$2" "$log/$1" | cut -c1-200 | sed "s/^/  $1: /")
	[ -z "$f" ] || failures="$failures
$f"
}

finish() { # WHAT: the total; non-zero when a layer failed
	echo "$1: $tp passed, $tf failed, $ts skipped"
	[ -z "$failures" ] || echo "failed:$failures"
	if [ -n "$bad" ]; then
		echo "FAILED layers:$bad" >&2
		return 1
	fi
}
