"""The chain keys criusec leaves in root's user keyring (criusec:<checkpoint
id>, see Documentation/criusec.md, "Encrypted chains"): listed and removed
by the tests that make them (there is no keyctl(1) on every machine)."""
import ctypes
import sys

SYS_KEYCTL, KEYCTL_DESCRIBE, KEYCTL_UNLINK, KEYCTL_READ, KEY_SPEC_USER_KEYRING = 250, 6, 9, 11, -4
_libc = ctypes.CDLL(None, use_errno=True)


def chain_keys():
    """{serial: description} of the criusec chain keys in root's user keyring."""
    # The kernel says how many bytes the ring's serials take; a buffer too
    # small gets none (a long-used machine can hold tens of thousands of keys).
    n = 65536
    while True:
        buf = ctypes.create_string_buffer(n)
        n = _libc.syscall(SYS_KEYCTL, KEYCTL_READ, KEY_SPEC_USER_KEYRING, buf, len(buf))
        if n <= len(buf):
            break
    out = {}
    for i in range(0, max(n, 0), 4):
        serial = int.from_bytes(buf.raw[i:i + 4], sys.byteorder, signed=True)
        d = ctypes.create_string_buffer(512)
        if _libc.syscall(SYS_KEYCTL, KEYCTL_DESCRIBE, serial, d, len(d)) > 0:
            desc = d.value.decode().rsplit(";", 1)[-1]
            if desc.startswith("criusec:"):
                out[serial] = desc
    return out


def unlink(serial):
    _libc.syscall(SYS_KEYCTL, KEYCTL_UNLINK, serial, KEY_SPEC_USER_KEYRING)
