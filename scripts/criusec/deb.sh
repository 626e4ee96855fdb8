#!/bin/sh
# make deb: Debian binary packages of criusec in build/deb/, built by Debian's
# own tools (dpkg-buildpackage, debhelper) from a fresh patched tree, so that
# the paths compiled into criu and compel are the package's (/usr, Debian's
# multiarch compel directory), not those of the development build.
#
# The packaging is packaging/debian/ in the repository; it is copied into
# build/pkg/criusec-VERSION/ (upstream tarball + patches + our files, made by
# prepare-tree.sh) and built there.  As root, missing build dependencies are
# installed with apt first (NO_DEPS=1 skips that).
#
# Usage: deb.sh TARBALL BUILD REPO JOBS
set -eu
tarball=$1
build=$2
repo=$3
jobs=$4
die() { echo "deb: $*" >&2; exit 1; }

deb=$repo/packaging/debian
version=$(dpkg-parsechangelog -l "$deb/changelog" -S Version 2>/dev/null) ||
	die "dpkg-parsechangelog failed (apt-get install dpkg-dev)"
# The package's version names the upstream CRIU and the criusec engine it
# holds: 4.2.1+criusec1.1.0-1 sorts above every Debian revision of criu
# 4.2.1 (and bookworm's 3.17.1), below a future upstream 4.2.2.
criu_v=$(sed -n 's/^CRIU_VERSION[[:space:]]*:=[[:space:]]*//p' "$repo/Makefile")
engine_v=$(sed -n 's/^project(criusec VERSION \([0-9.]*\).*/\1/p' "$repo/criu/criusec/CMakeLists.txt")
case "$version" in
"$criu_v+criusec$engine_v"-*) ;;
*) die "packaging/debian/changelog says $version, but the tree is CRIU $criu_v with criusec $engine_v: add a changelog entry for $criu_v+criusec$engine_v-1" ;;
esac

top=$build/pkg
src=$top/criusec-${version%-*}
# A fresh tree every time: nothing of an earlier build leaks into the package.
rm -rf "$src"
mkdir -p "$top"
"$repo/scripts/criusec/prepare-tree.sh" "$tarball" "$src" "$repo"
rm -rf "$src/debian"
cp -r "$deb" "$src/debian"

if [ "$(id -u)" = 0 ] && [ -z "${NO_DEPS:-}" ]; then
	export DEBIAN_FRONTEND=noninteractive
	apt_opts="-y -qq --no-install-recommends -o DPkg::Lock::Timeout=600"
	if ! command -v dpkg-checkbuilddeps >/dev/null; then
		apt-get update -qq
		# shellcheck disable=SC2086
		apt-get install $apt_opts dpkg-dev
	fi
	if ! (cd "$src" && dpkg-checkbuilddeps >/dev/null 2>&1); then
		echo "deb: installing the build dependencies of packaging/debian/control"
		apt-get update -qq
		# shellcheck disable=SC2086
		apt-get build-dep $apt_opts "$src"
	fi
fi

rm -f "$top"/*.deb "$top"/*.ddeb "$top"/*.buildinfo "$top"/*.changes
log=$top/dpkg-buildpackage.log
echo "deb: dpkg-buildpackage -b in $src (log: $log)"
if ! (cd "$src" && dpkg-buildpackage -b -us -uc -j"$jobs") >"$log" 2>&1; then
	tail -40 "$log" >&2
	die "dpkg-buildpackage failed (whole log: $log)"
fi

out=$repo/build/deb
rm -rf "$out"
mkdir -p "$out/dbgsym"
# Debug symbols (-dbgsym) apart, so that build/deb/*.deb is what to install.
mv "$top"/*-dbgsym_*.deb "$out/dbgsym/" 2>/dev/null || true
mv "$top"/*.ddeb "$out/dbgsym/" 2>/dev/null || true
mv "$top"/*.deb "$top"/*.buildinfo "$top"/*.changes "$out"/
for f in "$out"/*.deb; do
	echo "deb: $(basename "$f"): $(dpkg-deb -f "$f" Depends)"
done
echo "deb: install with: apt-get install $out/*.deb"
