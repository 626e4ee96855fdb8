#!/bin/busybox sh
# /init of the VM test layer's initramfs (see vm.sh), run by busybox.
# Stage 1 (PID 1 in the initramfs): the host's / read-only over virtio-9p
# under a tmpfs overlay, the kernel file systems, the results share; then
# switch_root.  Stage 2 (PID 1 in the new root): sysctls, modules, the
# command; its exit code goes to the results share, then power off.
# VM_RESULTS and VM_MODULES come from the kernel command line (the kernel
# passes unknown NAME=VALUE parameters to init's environment).
export PATH=/run/vm:/usr/sbin:/usr/bin:/sbin:/bin
bb=/bin/busybox

die() { echo "vm-init: $*"; $bb sync; $bb poweroff -f; }

if [ "${1:-}" != stage2 ]; then
	$bb mount -t devtmpfs dev /dev
	exec </dev/console >/dev/console 2>&1
	$bb mount -t proc proc /proc
	$bb mount -t sysfs sys /sys
	while read -r m; do $bb insmod "/mod/$m" || die "insmod $m failed"; done </mod/order
	$bb mkdir -p /lower /rw /newroot
	# security_model=none on the host: the guest sees the host's owners and modes.
	$bb mount -t 9p -o ro,trans=virtio,version=9p2000.L,msize=262144,cache=loose hostroot /lower ||
		die "cannot mount the host's root"
	$bb mount -t tmpfs -o mode=0755 rw /rw
	$bb mkdir /rw/upper /rw/work
	# redirect_dir: directories from the host can be renamed too (ZDTM
	# renames its dump directories, which a run on the host may have left).
	$bb mount -t overlay -o redirect_dir=on,lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work root /newroot ||
		die "cannot mount the overlay"
	n=/newroot
	$bb mount -t proc proc $n/proc
	$bb mount -t sysfs sys $n/sys
	$bb mount -t devtmpfs dev $n/dev
	$bb mkdir -p $n/dev/pts $n/dev/shm $n/dev/mqueue
	$bb mount -t devpts -o newinstance,ptmxmode=0666,mode=0620,gid=5 devpts $n/dev/pts
	$bb mount -t tmpfs -o mode=1777 shm $n/dev/shm
	$bb mount -t mqueue mqueue $n/dev/mqueue
	$bb mount -t cgroup2 cgroup2 $n/sys/fs/cgroup
	$bb mount -t tmpfs -o mode=1777 tmp $n/tmp
	$bb mount -t tmpfs -o mode=0755 run $n/run
	# The host's criu configuration and keys are not the guest's: a line
	# "encrypt" in /etc/criu/default.conf would change every run.  Emptied
	# in the overlay only.
	for d in /etc/criu /etc/pki/criu; do
		$bb rm -rf "$n$d" && $bb mkdir -p "$n$d"
	done
	# The one place the guest writes to the host.
	$bb mkdir -p "$n$VM_RESULTS"
	$bb mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 results "$n$VM_RESULTS" ||
		die "cannot mount the results share"
	# The guest kernel's modules, for modprobe (the kernel's and criu's).
	$bb mkdir -p $n/lib/modules
	$bb ln -sfn "$VM_MODULES" "$n/lib/modules/$($bb uname -r)"
	# Our busybox and this script in the new root, for stage 2 and as modprobe.
	$bb mkdir -p $n/run/vm
	$bb cp $bb $n/run/vm/busybox
	$bb cp /init $n/run/vm/init
	$bb ln -s busybox $n/run/vm/modprobe
	exec $bb switch_root $n /run/vm/busybox sh /run/vm/init stage2
fi

bb=/run/vm/busybox
# Plain "\n" on the console: the host shows it as it comes (no filter).
$bb stty -onlcr
echo /run/vm/modprobe >/proc/sys/kernel/modprobe
$bb sysctl -q -w vm.unprivileged_userfaultfd=1 fs.pipe-max-size=4194304
# Under TCG with a thread per vCPU (QEMU's MTTCG) a vCPU can run a stale
# int3 of the kernel's jump-label patching: "Oops: int3" in __schedule, a
# panic.  6.12 hit it at the perf_sched_events key, which every criu run
# toggles (ptrace hardware breakpoints are task-bound perf events).  One
# task-bound perf event held open for the whole run keeps that key on, so
# it is never patched again.
/usr/bin/python3 -c '
import ctypes, signal, struct
attr = ctypes.create_string_buffer(struct.pack("IIQ", 1, 128, 0).ljust(128, b"\0"))
# perf_event_open(attr: software cpu-clock, pid 0: this task, any cpu)
if ctypes.CDLL(None, use_errno=True).syscall(298, attr, 0, -1, -1, 0) < 0:
    raise SystemExit("vm-init: perf_event_open: errno %d" % ctypes.get_errno())
signal.pause()
' &
# The same at memcg_kmem_online_key, in kmalloc's and kmem_cache_alloc's
# fast path: "Oops: int3" in __kmalloc_noprof and kmem_cache_alloc_noprof
# when Podman made the first memory cgroup while the other vCPU allocated
# (CI on 61b8067, and here; the key read from the guest's __jump_table).
# The first memory cgroup below the root turns that key on for good: one
# made now, while nothing else runs, and kept (memcg_sockets_enabled_key
# counts them).
if echo +memory >/sys/fs/cgroup/cgroup.subtree_control && $bb mkdir -p /sys/fs/cgroup/criusec-vm-keys; then
	:
else
	echo "vm-init: no memory cgroup made: a container's first may panic the guest under TCG"
fi
# criu's socket dumps and ZDTM's tun tests.
for m in unix_diag inet_diag tcp_diag udp_diag raw_diag netlink_diag af_packet_diag tun; do
	$bb modprobe "$m" || echo "vm-init: modprobe $m failed"
done
$bb ip link set lo up
$bb hostname criusec-vm
# In the background and waited for: this shell, PID 1, then also reaps
# the orphans the tests leave.
/bin/bash "$VM_RESULTS/cmd" &
wait $!
echo $? >"$VM_RESULTS/rc"
$bb sync
$bb umount "$VM_RESULTS"
$bb poweroff -f
