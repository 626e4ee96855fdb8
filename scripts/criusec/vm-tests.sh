#!/bin/bash
# make test-vm, inside the guest (vm.sh runs it under Debian 12's kernel):
# the layers that need memory tracking, each with its count, then the total.
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

all="chains podman-chain zdtm-chain-pre zdtm-chain-snaps zdtm-chain-pre-encrypt zdtm-chain-snaps-encrypt"
for l in ${VM_LAYERS:-}; do
	case " $all " in *" $l "*) ;; *) echo "VM_LAYERS: no layer $l (layers: $all)" >&2; exit 2 ;; esac
done
want() { [ -z "${VM_LAYERS:-}" ] || case " $VM_LAYERS " in *" $1 "*) true ;; *) false ;; esac; }

# Without tracking everything below would skip (and fail for passing
# nothing): say why first.
echo "== memory tracking (criu check --feature mem_dirty_track) on $(uname -r)"
"$src/criu/criu" check --feature mem_dirty_track 2>&1 | tee "$log/tracking"
rc=$?
layer tracking $((rc == 0)) $((rc != 0)) 0 "$rc"

if want chains; then
	echo "== pre-dump chains (pytest test_chains.py)"
	pytest_layer chains test_chains.py
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

want zdtm-chain-pre && zdtm_layer zdtm-chain-pre chain --pre 2
want zdtm-chain-snaps && zdtm_layer zdtm-chain-snaps chain --pre 2 --snaps
# The same encrypted: each dump signs, and reads its parent with the chain
# key the earlier one left in the keyring (no --tls-key on the dumps).
want zdtm-chain-pre-encrypt && zdtm_layer zdtm-chain-pre-encrypt chain --pre 2 --encrypt
want zdtm-chain-snaps-encrypt && zdtm_layer zdtm-chain-snaps-encrypt chain --pre 2 --snaps --encrypt

finish "criusec VM tests"
