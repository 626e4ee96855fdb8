#!/bin/sh
# The guest of the VM test layer (scripts/criusec/vm.sh): Debian 12's Linux
# 6.12 (bookworm-security), which has both memory tracking mechanisms:
# soft-dirty (CONFIG_MEM_SOFT_DIRTY) and userfaultfd write-protect with
# UFFD_FEATURE_WP_ASYNC and PAGEMAP_SCAN (6.7 and later; Debian's 6.1 has
# soft-dirty only).  And a busybox initramfs.
#   vm-image.sh DIR    -> DIR/vmlinux, DIR/initramfs, DIR/modules (cached)
# The kernel package is fetched through the mirror apt already uses and
# unpacked with dpkg-deb -x: never installed (that would rewrite the boot
# setup of this machine).  A second run reuses everything under DIR.
set -eu
dir=$(realpath -m "$1")
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$dir"
cd "$dir"

# The newest linux-image-6.12.*+deb12-amd64-unsigned in apt's lists (no
# metapackage points at it; the -unsigned one carries the same kernel and
# modules as the signed one, without the shim dependencies).
want=6.12
if [ ! -f kernel.stamp ] || ! grep -q "^linux-image-$want\." kernel.stamp; then
	kpkg() { apt-cache pkgnames "linux-image-$want." 2>/dev/null | grep -E '^linux-image-[0-9.]+\+deb12-amd64-unsigned$' | sort -V | tail -1; }
	pkg=$(kpkg)
	# A machine whose apt lists were never fetched.
	if [ -z "$pkg" ] && [ "$(id -u)" = 0 ]; then apt-get update -qq && pkg=$(kpkg); fi
	[ -n "$pkg" ] || { echo "vm-image: no linux-image-$want.*+deb12-amd64-unsigned in apt's lists (bookworm-security in apt's sources?)" >&2; exit 1; }
	echo "vm-image: fetching $pkg (apt-get download, not installed)"
	rm -rf pkg && mkdir pkg
	# The download goes to a root-owned directory: no _apt sandbox.
	(cd pkg && apt-get -q -o APT::Sandbox::User=root download "$pkg")
	rm -rf root
	dpkg-deb -x pkg/*.deb root
	rm -rf pkg
	# 6.12's modules come xz-compressed: unpacked once here, so that busybox's
	# insmod and modprobe (in the initramfs and the guest) need no xz support.
	find root/lib/modules -name '*.ko.xz' -print0 | xargs -0r xz -d
	echo "$pkg" >kernel.stamp
	rm -f vmlinux initramfs initramfs.stamp
fi
kver=$(ls root/lib/modules)
mods=root/lib/modules/$kver
ln -sfn "$mods" modules

# The package ships no modules.dep (its postinst runs depmod): make one.
[ -f "$mods/modules.dep" ] || busybox depmod -b root "$kver"

# The uncompressed vmlinux boots through its PVH entry point (QEMU loads an
# ELF kernel directly): no bzImage decompression in the guest, seconds
# saved under TCG.  bzImage carries it as one compressed stream: zstd in
# Debian's 6.12, xz in its 6.1.
if [ ! -f vmlinux ]; then
	/usr/bin/python3 - root/boot/vmlinuz-"$kver" vmlinux.tmp <<'PY'
import lzma, subprocess, sys
img = open(sys.argv[1], "rb").read()
out = b""
at = img.find(b"\x28\xb5\x2f\xfd")
if at >= 0:
    # zstd stops with an error at the bytes after the frame: its output counts.
    out = subprocess.run(["zstd", "-dcq"], input=img[at:], stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL).stdout
if out[:4] != b"\x7fELF":
    at = img.find(b"\xfd7zXZ\x00")
    out = lzma.LZMADecompressor().decompress(img[at:]) if at >= 0 else b""
if out[:4] != b"\x7fELF":
    sys.exit("vm-image: no zstd- or xz-compressed ELF kernel in " + sys.argv[1])
open(sys.argv[2], "wb").write(out)
PY
	mv vmlinux.tmp vmlinux
fi

# The initramfs: busybox, the modules needed to mount the host's root
# (virtio-pci, 9p, overlay, with what they depend on, in load order) and
# /init.  Rebuilt when the init script or this one changes.
sum=$(cat "$here/vm-init.sh" "$here/vm-image.sh" | sha256sum)
if [ ! -f initramfs ] || [ "$(cat initramfs.stamp 2>/dev/null)" != "$sum" ]; then
	rm -rf initrd && mkdir -p initrd/bin initrd/mod initrd/dev initrd/proc initrd/sys
	cp "$(command -v busybox)" initrd/bin/busybox
	cp "$here/vm-init.sh" initrd/init && chmod 755 initrd/init
	# Each wanted module after everything it depends on (modules.dep).
	awk -v want="virtio_pci 9pnet_virtio 9p overlay" '
		function visit(p,   d, k, i) {
			if (p == "" || seen[p]++) return
			k = split(dep[p], d, " ")
			for (i = 1; i <= k; i++) visit(d[i])
			print p
		}
		{ p = $1; sub(/:$/, "", p); n = p; sub(/.*\//, "", n); sub(/\.ko$/, "", n)
		  gsub(/-/, "_", n); byname[n] = p; $1 = ""; dep[p] = $0 }
		END { k = split(want, w, " "); for (i = 1; i <= k; i++) visit(byname[w[i]]) }
	' "$mods/modules.dep" >initrd/mod/order
	while read -r m; do cp "$mods/$m" initrd/mod/; done <initrd/mod/order
	sed -i 's|.*/||' initrd/mod/order
	(cd initrd && find . | busybox cpio -o -H newc) | gzip -1 >initramfs.tmp
	rm -rf initrd
	mv initramfs.tmp initramfs
	echo "$sum" >initramfs.stamp
fi
echo "vm-image: $(cat kernel.stamp) ($kver) in $dir"
