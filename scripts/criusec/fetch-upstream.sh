#!/bin/sh
# Fetch upstream CRIU's release tarball from Debian's source packages through the
# mirror the system's apt already uses, with a private apt state so the system's
# configuration is left alone.  Usage: fetch-upstream.sh OUTFILE
set -eu

VERSION=4.2.1
SHA256=29ec0ee09e296479fe7048c80980e8ef1d0684d0b0204c2b101dfea19f6725b9
out=$1

die() { echo "fetch-upstream: $*" >&2; exit 1; }

verify() {
	sum=$(sha256sum "$1" | cut -d' ' -f1)
	[ "$sum" = "$SHA256" ] || die "checksum mismatch for $1 (got $sum, want $SHA256); delete it and retry, or pass CRIU_TARBALL=/path/to/criu_${VERSION}.orig.tar.xz"
}

if [ -n "${CRIU_TARBALL:-}" ]; then
	[ -f "$CRIU_TARBALL" ] || die "CRIU_TARBALL=$CRIU_TARBALL does not exist"
	verify "$CRIU_TARBALL"
	cp "$CRIU_TARBALL" "$out.tmp" && mv "$out.tmp" "$out"
	exit 0
fi

command -v apt-get >/dev/null || die "apt-get not found; pass CRIU_TARBALL=/path/to/criu_${VERSION}.orig.tar.xz"

# The mirror apt already uses: deb822 sources first, then the one-line format.
uri=""
for f in /etc/apt/sources.list.d/*.sources; do
	[ -f "$f" ] || continue
	uri=$(awk '/^URIs:/{print $2; exit}' "$f")
	[ -n "$uri" ] && break
done
if [ -z "$uri" ] && [ -f /etc/apt/sources.list ]; then
	uri=$(awk '$1=="deb"{for(i=2;i<=NF;i++) if ($i ~ /:\/\//) {print $i; exit}}' /etc/apt/sources.list)
fi
[ -n "$uri" ] || die "no apt mirror configured; pass CRIU_TARBALL=/path/to/criu_${VERSION}.orig.tar.xz"
uri=${uri%/}
case "$uri" in
*/debian-security) die "only a security mirror is configured; pass CRIU_TARBALL=..." ;;
esac

state=$(mktemp -d)
trap 'rm -rf "$state"' EXIT
mkdir -p "$state/lists/partial" "$state/cache/archives/partial" "$state/parts" "$state/dl"
# Suites that have carried criu 4.2.1; the first one that has it wins.
for suite in unstable testing; do
	printf 'Types: deb-src\nURIs: %s\nSuites: %s\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
		"$uri" "$suite" > "$state/parts/src.sources"
	opts="-o Dir::Etc::SourceList=/dev/null -o Dir::Etc::SourceParts=$state/parts \
-o Dir::State::Lists=$state/lists -o Dir::Cache=$state/cache -o Dir::State::status=/var/lib/dpkg/status \
-o APT::Sandbox::User=root -o Debug::NoLocking=1"
	# shellcheck disable=SC2086
	apt-get $opts -qq update >"$state/update.log" 2>&1 || { cat "$state/update.log" >&2; continue; }
	# Exits non-zero when the Debian packaging tarball is absent from the
	# mirror; the .orig tarball is all we need, so judge by the file.
	# shellcheck disable=SC2086
	(cd "$state/dl" && apt-get $opts -qq source --download-only "criu=${VERSION}-1" >"$state/source.log" 2>&1) || true
	if [ -f "$state/dl/criu_${VERSION}.orig.tar.xz" ]; then
		verify "$state/dl/criu_${VERSION}.orig.tar.xz"
		mv "$state/dl/criu_${VERSION}.orig.tar.xz" "$out"
		echo "fetch-upstream: criu_${VERSION}.orig.tar.xz from Debian $suite, sha256 verified"
		exit 0
	fi
done
cat "$state/source.log" >&2 2>/dev/null || true
die "could not fetch criu_${VERSION}.orig.tar.xz through apt; download it by hand and pass CRIU_TARBALL=/path/to/it"
