#!/bin/bash
# make test-vm, inside the guest (vm.sh runs it under Debian 12's Linux
# 6.12): the layers that need memory tracking, each with its count, then the
# total.
# Exits non-zero if any layer fails or runs no test; the layers' output is
# kept in $VM_RESULTS/logs for the host.
# Usage: vm-tests.sh SRC
# VM_LAYERS="NAME..." runs only those layers (names as in the counts below;
# memory tracking always runs first); unset or empty: every layer.  From the
# host: make test-vm VM_LAYERS=podman-chain.
set -u -o pipefail
src=$(realpath "$1")
repo=$(cd "$(dirname "$0")/../.." && pwd)
export PATH="/usr/sbin:/usr/bin:/sbin:/bin:$PATH"
log=${VM_RESULTS:?run me through vm.sh}/logs
mkdir -p "$log"
# shellcheck source=scripts/criusec/layers.sh
. "$repo/scripts/criusec/layers.sh"

# Every layer under soft-dirty (what auto picks on this kernel), then ZDTM's
# chains again with the userfaultfd mechanism forced.  Only when named, to
# keep the whole under about 35 minutes of TCG: the pytest chains
# (chains-uffd, 5 to 10 minutes) and ZDTM's encrypted ones under userfaultfd
# (3 to 6 minutes each).  The tracker decides which pages a pass takes, not
# how they are sealed, and make test runs test_chains.py, its encrypted
# chains included, under userfaultfd on the host (Podman's chain too, in
# make test-engines).
all="chains podman-chain zdtm-chain-pre zdtm-chain-snaps zdtm-chain-pre-encrypt zdtm-chain-snaps-encrypt \
zdtm-chain-pre-uffd zdtm-chain-snaps-uffd"
# And, one-off and long, ZDTM's whole suite with --pre 2 (against the
# host's userfaultfd run, Documentation/mem-tracking.md).
extra="chains-uffd zdtm-chain-pre-encrypt-uffd zdtm-chain-snaps-encrypt-uffd zdtm-full-pre"
for l in ${VM_LAYERS:-}; do
	case " $all $extra " in *" $l "*) ;; *) echo "VM_LAYERS: no layer $l (layers: $all; also: $extra)" >&2; exit 2 ;; esac
done
want() { [ -z "${VM_LAYERS:-}" ] || case " $VM_LAYERS " in *" $1 "*) true ;; *) false ;; esac; }
named() { [ -n "${VM_LAYERS:-}" ] && want "$1"; } # the layers in $extra

# Without tracking everything below would skip (and fail for passing
# nothing): say why first.  This kernel has both mechanisms: auto must pick
# soft-dirty, and each must work when forced.
echo "== memory tracking (criu check --feature mem_dirty_track) on $(uname -r)"
: >"$log/tracking"
tracking() { # WANTED [criu check options]: passes when criu says it tracks with WANTED
	local out rc
	out=$("$src/criu/criu" check --feature mem_dirty_track "${@:2}" 2>&1)
	rc=$?
	echo "criu check --feature mem_dirty_track ${*:2} (want $1): exit $rc: $out" | tee -a "$log/tracking"
	[ "$rc" -eq 0 ] && case $out in *"Memory tracking: $1"*) true ;; *) false ;; esac
}
tr_ok=0 tr_bad=0
for t in "soft-dirty" "soft-dirty --mem-tracker=soft-dirty" "uffd --mem-tracker=uffd"; do
	# shellcheck disable=SC2086
	if tracking $t; then tr_ok=$((tr_ok + 1)); else tr_bad=$((tr_bad + 1)); fi
done
layer tracking "$tr_ok" "$tr_bad" 0 0

# Which mechanism a layer's dumps really used: the userfaultfd one logs
# "mem-track: PID: N VMAs write-protected for tracking" at each pass,
# soft-dirty never logs a "mem-track:" line.
used() { # LAYER DIR MECHANISM: fails LAYER when the dump logs under DIR disagree
	local n all
	all=$(grep -rlE --include='*.log' '(Pre-dumping|Dumping) finished successfully' "$2" 2>/dev/null | wc -l)
	n=$(grep -rl --include='*.log' 'mem-track: .*write-protected for tracking' "$2" 2>/dev/null | wc -l)
	echo "== $1: $n of its $all (pre-)dump logs tracked with userfaultfd (the layer wants $3)"
	if [ "$all" -eq 0 ] || { [ "$3" = uffd ] && [ "$n" -eq 0 ]; } || { [ "$3" != uffd ] && [ "$n" -ne 0 ]; }; then
		echo "== $1: FAILED: its dumps did not track with $3" >&2
		bad="$bad $1"
	fi
}
# The pytest layers keep their tmp_path (logs included) here; ZDTM keeps its
# images and logs (--keep-img always) in test/dump, emptied before each layer
# (in the guest's overlay: the host's copy stays).
scratch=/run/criusec-vm
mkdir -p "$scratch"
chains() { # NAME MECHANISM
	CRIUSEC_KEEP_TMP=1 pytest_layer "$1" test_chains.py --basetemp="$scratch/$1"
	used "$1" "$scratch/$1" "$2"
	rm -rf "${scratch:?}/$1"
}
zdtm_chain() { # NAME MECHANISM [zdtm.py options]
	local name=$1 mech=$2
	shift 2
	rm -rf "$src/test/dump"
	zdtm_layer "$name" chain --keep-img always "$@"
	used "$name" "$src/test/dump" "$mech"
	rm -rf "$src/test/dump"
}

if want chains; then
	echo "== pre-dump chains (pytest test_chains.py)"
	chains chains soft-dirty
fi

# Podman's --pre-checkpoint / --with-previous / --import-previous, encrypted
# by runc.conf alone; Podman, runc and conmon are the host's (make
# test-engines installs them).
if want podman-chain; then
	echo "== Podman's incremental checkpoint (pytest test/engines/test_podman_chain.py)"
	missing=""
	for p in podman runc conmon; do command -v "$p" >/dev/null || missing="$missing $p"; done
	if [ -n "$missing" ]; then
		skip_layer podman-chain "not installed on the host:$missing (make test-engines installs them)"
	else
		engines_layer podman-chain test_podman_chain.py
	fi
fi

want zdtm-chain-pre && zdtm_chain zdtm-chain-pre soft-dirty --pre 2
want zdtm-chain-snaps && zdtm_chain zdtm-chain-snaps soft-dirty --pre 2 --snaps
# The same encrypted: each dump signs, and reads its parent with the chain
# key the earlier one left in the keyring (no --tls-key on the dumps).
want zdtm-chain-pre-encrypt && zdtm_chain zdtm-chain-pre-encrypt soft-dirty --pre 2 --encrypt
want zdtm-chain-snaps-encrypt && zdtm_chain zdtm-chain-snaps-encrypt soft-dirty --pre 2 --snaps --encrypt

# The userfaultfd mechanism forced on the same kernel, by a config file line
# through $CRIU_CONFIG_FILE: criu reads that file even under zdtm.py's
# --no-default-config, and every criu the tests start inherits it.
echo "mem-tracker uffd" >"$scratch/uffd.conf"
export CRIU_CONFIG_FILE=$scratch/uffd.conf
if named chains-uffd; then
	echo "== pre-dump chains, userfaultfd tracking (pytest test_chains.py)"
	chains chains-uffd uffd
fi
want zdtm-chain-pre-uffd && zdtm_chain zdtm-chain-pre-uffd uffd --pre 2
want zdtm-chain-snaps-uffd && zdtm_chain zdtm-chain-snaps-uffd uffd --pre 2 --snaps
named zdtm-chain-pre-encrypt-uffd && zdtm_chain zdtm-chain-pre-encrypt-uffd uffd --pre 2 --encrypt
named zdtm-chain-snaps-encrypt-uffd && zdtm_chain zdtm-chain-snaps-encrypt-uffd uffd --pre 2 --snaps --encrypt
unset CRIU_CONFIG_FILE

# ZDTM's whole suite with --pre 2 under soft-dirty, as "make zdtm-full-pre"
# runs it on the host (userfaultfd there): its TAP report and the output of
# each failed test stay in $VM_RESULTS/logs/zdtm-full-pre.report for
# scripts/criusec/zdtm-compare.sh.  Only when named in VM_LAYERS.
if named zdtm-full-pre; then
	ZDTM_REPORT_DIR=$log/zdtm-full-pre.report zdtm_layer zdtm-full-pre "${ZDTM_FULL_SET:-full}" --pre 2
fi

finish "criusec VM tests"
