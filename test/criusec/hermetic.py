"""A mount namespace of our own in which the host's criu configuration
(/etc/criu: config lines, the encryption-required marker, the default trust
file; /etc/pki/criu: the default keys) is hidden behind empty tmpfs: a line
"encrypt" or a trust file there would change every run, and a run that
creates them must not change the host (or a concurrent run).  Used by the
integration tests (conftest.py) and by make bench."""
import ctypes
import os

CLONE_NEWNS = 0x00020000
MS_REC, MS_PRIVATE = 0x4000, 1 << 18
HOST_CONFIG_DIRS = ("/etc/criu", "/etc/pki/criu")


def private_config_dirs():
    """unshare(CLONE_NEWNS) for this (single-threaded) process and its
    children, with an empty tmpfs over each of HOST_CONFIG_DIRS."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNS) != 0:
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNS)")
    if libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None) != 0:
        raise OSError(ctypes.get_errno(), "mount --make-rprivate /")
    for d in HOST_CONFIG_DIRS:
        os.makedirs(d, exist_ok=True)
        if libc.mount(b"tmpfs", d.encode(), b"tmpfs", 0, b"mode=0755") != 0:
            raise OSError(ctypes.get_errno(), f"mount tmpfs on {d}")
