#!/bin/sh
# Install the Debian packages the build, the tests and the benchmarks need;
# "deps.sh vm": those of the VM test layer (scripts/criusec/vm.sh) instead.
# Idempotent: apt-get update runs only when a package is missing.
# libbpf-dev: CRIU dumps BPF maps only when built with it.
# softhsm2: a PKCS#11 token for the tests of private keys kept in a token.
# liblz4-dev, libzstd-dev: --compress (python3-lz4, -zstandard: pycriu reads those checkpoints).
# clang-format, flake8, shellcheck, codespell: make lint (CRIU's checks; ruff is not
# in Debian 12, flake8 runs its rules instead).
set -eu

PKGS="build-essential pkg-config git xz-utils ca-certificates
libprotobuf-c-dev protobuf-c-compiler libprotobuf-dev protobuf-compiler
libnl-3-dev libnl-route-3-dev libnet1-dev libcap-dev libbsd-dev libnftables-dev uuid-dev
libgnutls28-dev libgmp-dev liblz4-dev libzstd-dev libaio-dev libdrm-dev libbpf-dev
python3 python3-protobuf python3-cryptography python3-lz4 python3-zstandard python3-yaml python3-pytest python3-pip
cmake g++ googletest libgtest-dev clang libclang-rt-dev
iproute2 iptables nftables procps psmisc util-linux tar gnutls-bin asciidoctor xmlto
age gnupg openssl softhsm2
clang-format flake8 shellcheck codespell"
# QEMU, and the guest's initramfs (static busybox); the guest's kernel is
# fetched by vm-image.sh, never installed.
if [ "${1:-}" = vm ]; then PKGS="qemu-system-x86 busybox-static zstd"; fi

missing=""
for p in $PKGS; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && { echo "deps: all packages present"; exit 0; }
echo "deps: installing$missing"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# shellcheck disable=SC2086
apt-get install -y -qq --no-install-recommends $missing
