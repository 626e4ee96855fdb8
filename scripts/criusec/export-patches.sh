#!/bin/sh
# Write build/src's commits since tag "upstream" back to patches/ as a
# series.  Output is stable (zeroed commit ids, no signature), so
# re-exporting an unchanged tree changes no file.
# Usage: export-patches.sh SRC REPO
set -eu
src=$1
repo=$2
die() { echo "patches-export: $*" >&2; exit 1; }
[ -d "$src/.git" ] || die "no work tree at $src; run 'make patch-tree' first"
[ -z "$(git -C "$src" status --porcelain --untracked-files=no)" ] ||
	die "build/src has uncommitted edits; commit them first (one commit per concern)"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# --no-numbered: adding a patch must not rewrite every other file ("[PATCH n/N]").
git -C "$src" format-patch -q --zero-commit --no-signature --no-stat --no-numbered --full-index \
	--abbrev=12 -o "$tmp" upstream..HEAD
rm -f "$repo"/patches/*.patch
{
	echo "# criusec patches to upstream CRIU 4.2.1, applied in order"
	for f in "$tmp"/*.patch; do
		[ -f "$f" ] || continue
		cp "$f" "$repo/patches/"
		basename "$f"
	done
} >"$repo/patches/series"
# The tree now matches patches/: record it so the next build does not re-apply.
{ cat "$repo/patches/series"; grep -v '^#' "$repo/patches/series" | while read -r p; do cat "$repo/patches/$p"; done; } |
	sha256sum | cut -d' ' -f1 >"$src/.git/criusec-series"
git -C "$src" rev-parse HEAD >"$src/.git/criusec-head"
echo "patches-export: $(grep -vc '^#' "$repo/patches/series") patches in patches/series"
