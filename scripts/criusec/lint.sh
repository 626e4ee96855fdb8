#!/bin/bash
# make lint: upstream CRIU's own style checks (its .clang-format and its
# 'make lint') on what we write, each check one line, then the count.
#  - our C files, whole: clang-format with CRIU's .clang-format;
#  - the series' hunks: clang-format-diff, as CRIU's 'make indent' does;
#  - upstream's 'make lint' on the patched tree: its pr_* rules, shellcheck,
#    its Python list, codespell on the files the series changes;
#  - our Python and shell (test/, scripts/, lib/pycriu/criusec*, pki/) and
#    codespell over the repo.
# ruff is not in Debian 12: flake8 runs its default rule set instead
# (pycodestyle E4, E7, E9 and pyflakes F), with CRIU's per-file ignore.
# Usage: lint.sh SRC REPO
set -u -o pipefail
src=$1
repo=$2
style="$src/.clang-format"
passed=0 failed=0

check() { # NAME COMMAND...: one check, its output only when it fails
	local name=$1 out
	shift
	if out=$("$@" 2>&1); then
		echo "lint: $name: ok"
		passed=$((passed + 1))
	else
		printf '%s\n' "$out" | head -60
		echo "lint: $name: FAILED ($(printf '%s\n' "$out" | grep -c .) lines of findings)"
		failed=$((failed + 1))
	fi
}

# Globs: more criu/criusec-*.c files are coming.
c_ours() { (cd "$repo" && ls criu/criusec*.c criu/include/criusec*.h criu/mem-track.c criu/include/mem-track.h criu/mem-snap.c criu/include/mem-snap.h 2>/dev/null); }

clang_format_ours() {
	(cd "$repo" && c_ours | xargs -r clang-format --style="file:$style" --dry-run --Werror)
}

# Every line the series adds or changes, as clang-format would write it.
# criu/image-desc.c is left out: its imgset_template table is one statement
# upstream keeps aligned by hand, so any entry added to it (upstream's own
# too) makes clang-format rewrite all of its 100 lines.
clang_format_series() {
	local out
	out=$(cd "$src" && git diff -U0 --no-color upstream HEAD -- '*.c' '*.h' |
		clang-format-diff -p1 -regex '(?!criu/image-desc\.c$).*\.[ch]') || return 1
	[ -z "$out" ] || { printf '%s\n' "$out"; return 1; }
}

# Upstream's pr_* message rules, on the patched tree (its own 'make lint'
# recipe, whose ruff, shellcheck and codespell steps are the checks below)...
upstream_pr_rules() { make -s -C "$src" -o ruff -o shellcheck -o codespell lint; }

# ... and on our C files, which git grep in the tree does not see (overlaid, untracked).
pr_rules_ours() {
	local files bad=0
	files=$(c_ours | sed "s|^|$repo/|")
	[ -n "$files" ] || return 0
	# shellcheck disable=SC2086
	{
		! grep -HE '^\s*\<(pr_perror|pr_pwarn|fail)\>.*\\n"' $files || bad=1
		! grep -HE '^\s*\<(pr_(err|perror|warn|pwarn|debug|info|msg)|fail)\>.*%m' $files || bad=1
		! grep -HE '^\s*\<(pr_perror|pr_pwarn|fail)\>\(".*".*errno' $files || bad=1
		! grep -HnE '^\s*\<pr_(err|warn|msg|info|debug)\>.*\);$' $files | grep -v '\\n' || bad=1
		! grep -HnE '\s+$' $files || bad=1
	}
	return $bad
}

flake8_ruff() { flake8 --select=E4,E7,E9,F --per-file-ignores=__init__.py:F401 "$@"; }

# Upstream's ruff file list, from its Makefile.
upstream_python() {
	local files
	files=$(make -s -C "$src" -n ruff 2>/dev/null | tr -d '\\\n' | sed 's|.*--config=scripts/ruff.toml||')
	# shellcheck disable=SC2086
	(cd "$src" && flake8_ruff $files)
}

upstream_shellcheck() { make -s -C "$src" shellcheck >/dev/null; }

codespell_ignore=$(sed -n 's/^ignore-words-list *= *//p' "$src/.codespellrc")

# Upstream runs codespell over its whole tree; here over the files the series
# changes (the rest is upstream's, and Debian's codespell 2.2.2 flags one word
# in it, 'inflight' in criu/sk-unix.c, that upstream's newer one accepts).
upstream_codespell() {
	(cd "$src" && git diff --name-only upstream HEAD | xargs -r codespell -L "$codespell_ignore")
}

python_ours() {
	# shellcheck disable=SC2046
	(cd "$repo" && flake8_ruff $(find test scripts pki -name '*.py' | sort) $(ls -d lib/pycriu/criusec* 2>/dev/null))
}

shell_ours() {
	(cd "$repo" && find test scripts pki -type f \( -name '*.sh' -o -perm -u+x \) ! -name '*.py' \
		-exec sh -c 'head -c 64 "$1" | grep -qE "^#!.*(/|env )(ba|da)?sh\b"' _ {} \; -print |
		sort | xargs -r shellcheck -x)
}

# iif: nftables' input-interface match, in the rules the canary tests plant.
# patches/ is left out: what the series adds is checked in the patched tree
# above (with upstream's whole .codespellrc), and its context is upstream's.
codespell_ours() {
	(cd "$repo" && codespell -L "$codespell_ignore,iif" --skip './.git,./build,./patches' .)
}

check "clang-format: our C files (criu/criusec*.c, criu/include/criusec*.h)" clang_format_ours
check "clang-format-diff: the series' hunks" clang_format_series
check "upstream make lint: pr_* rules on the patched tree" upstream_pr_rules
check "pr_* rules on our C files" pr_rules_ours
check "upstream make lint: flake8 for ruff, upstream's Python list" upstream_python
check "upstream make lint: shellcheck, upstream's list" upstream_shellcheck
check "upstream make lint: codespell, files the series changes" upstream_codespell
check "flake8 for ruff: our Python (test/, scripts/, lib/pycriu/criusec*)" python_ours
check "shellcheck: our shell (test/, scripts/, pki/)" shell_ours
check "codespell: the repository" codespell_ours

echo "lint: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
