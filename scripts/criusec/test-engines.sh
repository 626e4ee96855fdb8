#!/bin/bash
# make test-engines: Podman, Docker and containerd checkpoint and restore
# containers through criusec's Debian packages (build/deb), with encryption
# turned on by a config file only.
#
#   1. Install the engines from Debian (idempotent; no service starts: a
#      policy-rc.d says no while apt runs, if the machine has none).
#   2. If no criu is installed, install Debian's (runc recommends it: the
#      usual machine), then build/deb over it.
#   3. Run test/engines (pytest) in namespaces of its own (see
#      test/engines/isolation.py): the daemons it starts, their storage and
#      /etc/criu are private to the run.
#   4. Go back: Debian's criu as it was (or none), and check that the run left
#      nothing behind: no process, no cgroup, no file in /etc, /run, /var/lib.
#
# The engine packages stay installed (like 'make deps').  Prints pass/fail/
# skip counts per layer and the total, like run-tests.sh.
# Usage: test-engines.sh REPO
# ENGINES_TESTS="test_registry.py ..." runs only those files or pytest node
# ids of test/engines (default: all), e.g. make test-engines ENGINES_TESTS=test_registry.py
set -u -o pipefail
repo=$1
deb=$repo/build/deb
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
export DEBIAN_FRONTEND=noninteractive
apt_get() { apt-get -y -qq -o DPkg::Lock::Timeout=600 --no-install-recommends "$@"; }
FAMILY="criu libcriu2 libcriu-dev libcompel1 libcompel-dev python3-pycriu"
# skopeo, buildah, docker-registry, gnupg: the registry layer (test_registry.py).
ENGINES="podman runc conmon containernetworking-plugins docker.io containerd busybox-static
zstd iproute2 man-db skopeo buildah docker-registry gnupg"
start=$(date +%s)
work=$(mktemp -d /tmp/criusec-engines.XXXXXX)
passed=0 failed=0 bad=""

check() { # DESCRIPTION COMMAND...: one check of the package and host layer
	local what=$1
	shift
	if "$@" >"$work/check.out" 2>&1; then
		echo "ok: $what"
		passed=$((passed + 1))
	else
		echo "FAILED: $what"
		sed 's/^/    /' "$work/check.out" | tail -20
		failed=$((failed + 1))
	fi
}
count() { grep -oE "[0-9]+ $2" "$1" | tail -1 | grep -oE '[0-9]+' || echo 0; }
state() { # the criu packages: "name version" of each one installed
	for p in $FAMILY; do
		dpkg-query -W -f '${Package} ${db:Status-Status} ${Version}\n' "$p" 2>/dev/null
	done | awk '$2 == "installed" {print $1, $3}'
}
host_snapshot() { # what the run must not change on the host
	for p in /etc/criu /etc/pki/criu /etc/containers /etc/docker /etc/containerd /etc/cni; do
		[ -e "$p" ] && find "$p" -printf '%p %m %s %T@\n'
	done
	for p in /run/docker /run/docker.sock /run/docker.pid /run/containerd /run/containers \
		/run/libpod /run/runc /run/criusec-engines /var/lib/docker /var/lib/containerd \
		/var/lib/containers /var/lib/cni /etc/criu/default.conf; do
		[ -e "$p" ] && echo "exists $p"
	done
	ls -d /sys/fs/cgroup/*/libpod_parent /sys/fs/cgroup/*/docker /sys/fs/cgroup/*/default 2>/dev/null
	true
}

[ "$(id -u)" = 0 ] || { echo "test-engines: needs root (installs packages, runs container engines)" >&2; exit 1; }
ls "$deb"/criu_*.deb >/dev/null 2>&1 || { echo "test-engines: no build/deb/criu_*.deb: run make deb" >&2; exit 1; }
ours=$(dpkg-deb -f "$deb"/criu_*.deb Version)

echo "== engines from Debian"
missing=""
for p in $ENGINES; do
	dpkg-query -W -f '${db:Status-Status}' "$p" 2>/dev/null | grep -qx installed || missing="$missing $p"
done
if [ -n "$missing" ]; then
	echo "installing$missing"
	guard=""
	if [ ! -e /usr/sbin/policy-rc.d ]; then
		printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d
		guard=1
	fi
	apt-get -qq update
	# shellcheck disable=SC2086
	apt_get install $missing || echo "test-engines: apt-get install failed"
	[ -n "$guard" ] && rm -f /usr/sbin/policy-rc.d
fi
podman --version; runc --version | head -1; /usr/bin/docker --version; containerd --version
skopeo --version; buildah --version; dpkg-query -W -f 'docker-registry ${Version}\n' docker-registry

host_before=$(host_snapshot)
prior=$(state)
prior_criu=$(echo "$prior" | awk '$1 == "criu" {print $2}')
debian_criu=$prior_criu

go_back() {
	[ -n "${went_back:-}" ] && return
	went_back=1
	echo "== back to the packages of before the run"
	if [ -n "$debian_criu" ] && [ "$debian_criu" != "$ours" ]; then
		# Our libcriu2, libcompel1, python3-pycriu... break criu << 3.19-3:
		# apt removes them with the downgrade.
		apt_get --allow-downgrades install "criu=$debian_criu" >"$work/back.log" 2>&1
		check "Debian's criu $debian_criu back" sh -c "dpkg-query -W -f '\${Version}' criu | grep -qx '$debian_criu'"
		check "its criu is Debian's again" sh -c "/usr/sbin/criu --version | grep -q 'Version: ${debian_criu%%-*}' && ! /usr/sbin/criu --version | grep -q criusec"
	fi
	for p in $FAMILY; do
		echo "$prior" | grep -q "^$p " && continue
		dpkg-query -W -f '${db:Status-Status}' "$p" 2>/dev/null | grep -qx installed &&
			apt_get purge "$p" >>"$work/back.log" 2>&1
	done
	if [ -n "$prior_criu" ] && [ "$prior_criu" = "$ours" ]; then
		echo "note: criusec's criu $ours was installed before the run and stays installed"
	fi
	check "criu packages as before the run" same_packages
	check "host: /etc, /run, /var/lib and cgroups as before the run" same_host
}
same_packages() { [ "$(state)" = "$prior" ] || { echo "before: $prior"; echo "now: $(state)"; false; }; }
same_host() { diff <(echo "$host_before") <(host_snapshot); }
trap 'go_back; rm -rf "$work"' EXIT
trap 'exit 130' INT TERM

echo "== criusec's packages over Debian's criu"
if [ -z "$prior_criu" ]; then
	cand=$(apt-cache policy criu | awk '/Candidate:/ {print $2}')
	if [ -n "$cand" ] && [ "$cand" != "(none)" ]; then
		apt_get install "criu=$cand" >"$work/debian.log" 2>&1
		check "Debian's criu $cand installed first" sh -c "dpkg-query -W -f '\${Version}' criu | grep -qx '$cand'"
		debian_criu=$cand
	else
		echo "note: apt has no criu: build/deb is installed on a machine without one"
	fi
fi
apt_get install "$deb"/*.deb >"$work/install.log" 2>&1
check "apt-get install build/deb/*.deb: criu $ours" sh -c "dpkg-query -W -f '\${Version}' criu | grep -qx '$ours' || { cat '$work/install.log'; false; }"
check "Debian's files taken over: /usr/bin/crit is python3-pycriu's" sh -c "dpkg -S /usr/bin/crit | grep -q '^python3-pycriu:'"
check "runc's criu on PATH is criusec" sh -c "command -v criu | grep -qx /usr/sbin/criu && criu --version | grep -q criusec"

echo "== engines (pytest, test/engines)"
nsfile=$work/ns
# shellcheck disable=SC2086
(cd "$repo/test/engines" && CRIUSEC_DEB_VERSION=$ours CRIUSEC_ENGINES_NSFILE=$nsfile \
	/usr/bin/python3 -m pytest -v -rs -p no:cacheprovider --basetemp=/run/.criusec-engines/pytest ${ENGINES_TESTS:-}) 2>&1 | tee "$work/pytest"
rc=$?
ep=$(count "$work/pytest" passed) ef=$(( $(count "$work/pytest" failed) + $(count "$work/pytest" 'errors?') ))
es=$(count "$work/pytest" skipped)
echo "== engines: $ep passed, $ef failed, $es skipped"
{ [ "$rc" -ne 0 ] || [ "$ef" -ne 0 ] || [ "$ep" -eq 0 ]; } && bad="$bad engines"

nothing_left() { # no process in the run's mount namespace
	local ns p found=""
	ns=$(cat "$nsfile") || { echo "the tests did not say which namespace they ran in"; return 1; }
	for p in /proc/[0-9]*; do
		if [ "$(readlink "$p/ns/mnt" 2>/dev/null)" = "$ns" ]; then
			echo "left running: ${p#/proc/} $(tr '\0' ' ' <"$p/cmdline" 2>/dev/null)"
			found=1
		fi
	done
	[ -z "$found" ]
}
check "no process of the run left (daemons, shims, conmon, containers)" nothing_left

go_back
echo "== package and host: $passed passed, $failed failed, 0 skipped"
[ "$failed" -ne 0 ] && bad="$bad package"
echo "criusec engine tests: $((ep + passed)) passed, $((ef + failed)) failed, $es skipped in $(( $(date +%s) - start )) s"
if [ -n "$bad" ]; then
	echo "FAILED layers:$bad" >&2
	exit 1
fi
