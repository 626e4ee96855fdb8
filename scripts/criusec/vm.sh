#!/bin/bash
# Run a command in a VM that boots Debian 12's Linux 6.12 (it has soft-dirty
# memory tracking, which this machine's kernel lacks, and the userfaultfd
# one too: vm-image.sh) over this machine's root file system.
#   vm.sh [-t SECONDS] [-r RESULTS_DIR] [-e VAR]... [--] COMMAND [ARG]...
# The guest sees the host's / read-only (virtio-9p) under a tmpfs overlay:
# it may write anywhere, and nothing it writes reaches the host except
# RESULTS_DIR (default build/vm/results, emptied first), shared read-write
# at the same path.  /etc/criu and /etc/pki/criu are empty in the guest.
# COMMAND runs as root in the current directory, with PATH and each -e VAR
# of this environment.  Exits with COMMAND's exit code; 124 when the guest
# was killed at the timeout (default 3600 s), 125 when it died another way.
# A guest whose kernel panics is booted again, once (below).
# Environment: VM_ACCEL=kvm|tcg skips the accelerator probe, VM_MEM (MiB,
# default 3072), VM_CPUS (default 2).
set -eu -o pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
vmdir=$repo/build/vm
timeout=3600 results=$vmdir/results envs="PATH"
while getopts t:r:e: o; do
	case $o in
	t) timeout=$OPTARG ;;
	r) results=$OPTARG ;;
	e) envs="$envs $OPTARG" ;;
	*) exit 2 ;;
	esac
done
shift $((OPTIND - 1))
[ $# -gt 0 ] || { echo "usage: vm.sh [-t SECONDS] [-r DIR] [-e VAR]... COMMAND..." >&2; exit 2; }
say() { echo "vm: $*" >&2; }

if [ "$(id -u)" = 0 ]; then "$repo/scripts/criusec/deps.sh" vm >&2; fi
"$repo/scripts/criusec/vm-image.sh" "$vmdir/image" >&2
img=$vmdir/image
results=$(realpath -m "$results")
case $results in *[[:space:]]*) say "no spaces in the results path, please: $results"; exit 2 ;; esac
# Emptied first, so only a directory this script made before (or an empty one).
if [ -n "$(ls -A "$results" 2>/dev/null)" ] && [ ! -f "$results/cmd" ]; then
	say "$results is not empty and not a results directory of vm.sh: not emptying it"
	exit 2
fi
rm -rf "$results" "$results.panic.log" && mkdir -p "$results"

qemu() { # TIMEOUT ACCEL-ARGS... -- boot the guest, console on stdout
	local t=$1
	shift
	timeout -k 10 "$t" qemu-system-x86_64 -nodefaults -no-user-config -no-reboot \
		-display none -serial stdio -monitor none -nic none \
		-machine pc "$@" -smp "${VM_CPUS:-2}" -m "${VM_MEM:-3072}" \
		-kernel "$img/vmlinux" -initrd "$img/initramfs" \
		-append "console=ttyS0 quiet panic=-1 mitigations=off VM_RESULTS=$results VM_MODULES=$(realpath "$img/modules")" \
		-fsdev local,id=root,path=/,security_model=none,readonly=on,multidevs=remap \
		-device virtio-9p-pci,fsdev=root,mount_tag=hostroot \
		-fsdev local,id=res,path="$results",security_model=none,multidevs=remap \
		-device virtio-9p-pci,fsdev=res,mount_tag=results </dev/null
}

# KVM only when it boots an unmodified guest.  Here /dev/kvm belongs to a
# nested "PVM" hypervisor (module kvm_pvm) on which a stock kernel never
# gets past early boot: TCG then, without probing.  Elsewhere, a probe boot
# that runs "true" decides (cached per host kernel).
accel=${VM_ACCEL:-}
probe=$vmdir/accel.$(uname -r)
if [ -z "$accel" ] && [ -f "$probe" ]; then accel=$(cat "$probe"); fi
if [ -z "$accel" ]; then
	accel=tcg
	if [ -d /sys/module/kvm_pvm ]; then
		say "/dev/kvm is PVM (kvm_pvm), which cannot boot a stock kernel: TCG"
	elif [ -r /dev/kvm ] && [ -w /dev/kvm ]; then
		say "probing KVM"
		echo 'exit 0' >"$results/cmd"
		qemu 60 -accel kvm -cpu host >/dev/null 2>&1 || true
		[ "$(cat "$results/rc" 2>/dev/null)" = 0 ] && accel=kvm
		rm -f "$results/rc"
	fi
	echo "$accel" >"$probe"
fi
# What the guest runs: this directory, these variables, this command.
{
	printf 'cd %q || exit 125\n' "$PWD"
	for v in $envs; do
		if [ -n "${!v+x}" ]; then printf 'export %s=%q\n' "$v" "${!v}"; fi
	done
	printf 'export HOME=/root LANG=C.UTF-8 VM_RESULTS=%q\n' "$results"
	printf 'exec'; printf ' %q' "$@"; printf '\n'
} >"$results/cmd"

case $accel in
kvm) set -- -accel kvm -cpu host ;;
tcg) set -- -accel tcg,thread=multi -cpu max ;;
*) say "VM_ACCEL must be kvm or tcg"; exit 2 ;;
esac

# A guest kernel that panics (under TCG: a stale int3 of jump-label
# patching, whose known keys vm-init.sh turns on at boot; another key may
# remain) gets one fresh guest: its console from the panic on is printed
# first, and a second panic fails the run.
boot() {
	say "booting Debian's $(cat "$img/kernel.stamp") ($accel, timeout ${timeout}s), results in $results"
	start=$(date +%s)
	rc=0
	qemu "$timeout" "$@" | tee "$results/console.log" || rc=$?
	say "guest ran $(($(date +%s) - start)) s"
}
boot "$@"
if [ ! -f "$results/rc" ] && [ "$rc" != 124 ] && [ "$rc" != 137 ] && grep -q 'Kernel panic' "$results/console.log"; then
	say "the guest's kernel panicked; its console from the first sign of it:"
	grep -m1 -A60 -E 'BUG:|Oops|general protection fault|Kernel panic' "$results/console.log" >&2 || true
	mv "$results/console.log" "$results.panic.log"
	say "its console is kept in $results.panic.log; booting a fresh guest, once"
	cmd=$(cat "$results/cmd")
	rm -rf "$results" && mkdir -p "$results"
	printf '%s\n' "$cmd" >"$results/cmd"
	boot "$@"
fi
if [ -f "$results/rc" ]; then
	exit "$(cat "$results/rc")"
elif [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
	say "killed at the timeout (${timeout}s)"
	exit 124
fi
say "the guest died without an exit code (qemu: $rc)"
exit 125
