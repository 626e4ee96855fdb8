#!/bin/sh
# Make build/src: the upstream tarball as a git work tree (first commit,
# tagged "upstream"), our patches/series applied on top as one commit each,
# and the repo's own files overlaid (git-excluded, so only the patches are
# commits).  Re-applies the series only when patches/ changed, and refuses to
# throw away local commits that were not exported with 'make patches-export'.
#
# Usage: prepare-tree.sh TARBALL SRC REPO
set -eu
tarball=$1
src=$2
repo=$3
series="$repo/patches/series"
die() { echo "prepare-tree: $*" >&2; exit 1; }
g() { git -C "$src" -c user.name=criusec-build -c user.email=criusec-build@localhost -c advice.detachedHead=false "$@"; }

series_hash() {
	{ cat "$series"; grep -v '^[[:space:]]*\(#\|$\)' "$series" | while read -r p; do
		[ -f "$repo/patches/$p" ] || die "patches/series names $p, which does not exist"
		cat "$repo/patches/$p"; done; } | sha256sum | cut -d' ' -f1
}

apply_series() {
	grep -v '^[[:space:]]*\(#\|$\)' "$series" | while read -r p; do
		if ! g am -q --keep-cr --whitespace=nowarn "$repo/patches/$p" >/dev/null 2>"$src/.git/criusec-am.log"; then
			cat "$src/.git/criusec-am.log" >&2
			g am --abort >/dev/null 2>&1 || true
			die "patch $p does not apply (see above); fix it in build/src with 'make patch-tree' and 'make patches-export'"
		fi
	done
}

want=$(series_hash)
if [ ! -d "$src/.git" ]; then
	rm -rf "$src" "$src.tmp"
	mkdir -p "$src.tmp"
	tar -xf "$tarball" -C "$src.tmp" --strip-components=1
	mv "$src.tmp" "$src"
	g init -q
	g add -A -f .
	g commit -q -m "upstream criu 4.2.1 (criu_4.2.1.orig.tar.xz)"
	g tag upstream
	apply_series
	echo "$want" >"$src/.git/criusec-series"
	g rev-parse HEAD >"$src/.git/criusec-head"
	echo "prepare-tree: build/src made, $(g rev-list --count upstream..HEAD) patches applied"
elif [ "$want" != "$(cat "$src/.git/criusec-series" 2>/dev/null)" ]; then
	if [ "$(g rev-parse HEAD)" != "$(cat "$src/.git/criusec-head" 2>/dev/null)" ] ||
	   [ -n "$(g status --porcelain --untracked-files=no)" ]; then
		die "patches/ changed, but build/src has commits or edits not exported to patches/: run 'make patches-export' to keep them, or 'make reset-tree' to drop them"
	fi
	g reset -q --hard upstream
	apply_series
	echo "$want" >"$src/.git/criusec-series"
	g rev-parse HEAD >"$src/.git/criusec-head"
	echo "prepare-tree: patches re-applied ($(g rev-list --count upstream..HEAD))"
fi

# Overlay our own files.  cp -u keeps incremental builds incremental: only a
# file edited in the repo gets a newer copy.
exclude="$src/.git/info/exclude"
mkdir -p "$src/.git/info"
: >"$exclude.new"
for d in criu images lib crit test scripts Documentation pki include compel soccr plugins; do
	[ -d "$repo/$d" ] || continue
	(cd "$repo" && find "$d" -type f) | while read -r f; do
		if g cat-file -e "upstream:$f" 2>/dev/null; then
			die "$f exists upstream; change it with a patch, not by overlay"
		fi
		mkdir -p "$src/$(dirname "$f")"
		cp -pu "$repo/$f" "$src/$f"
		echo "/$f" >>"$exclude.new"
	done
done
# A file that left the repo (moved or split) leaves the tree too: the old
# overlay list is the exclude file of the last run.
if [ -f "$exclude" ]; then
	sort "$exclude.new" >"$exclude.sorted"
	sort "$exclude" | comm -23 - "$exclude.sorted" | while read -r f; do
		case "$f" in /*) ;; *) continue ;; esac
		g cat-file -e "HEAD:${f#/}" 2>/dev/null || rm -f "$src$f"
	done
	rm -f "$exclude.sorted"
fi
mv "$exclude.new" "$exclude"
