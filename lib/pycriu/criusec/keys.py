# SPDX-License-Identifier: LGPL-2.1-only
"""Private keys (section 3.4): loading PEM keys, fingerprints, and unwrapping
a recipient stanza with implicit rejection (engine: pki.cpp, pkcs11.cpp).
"""
import hashlib
import hmac
import os
import re

from .common import (
    DEFAULT_KEY, FormatError, MK_LEN, PrivateKeyError, _need_crypto, hashes, padding, rsa, serialization)


def fingerprint(pub):
    """SHA-256 of the DER SubjectPublicKeyInfo of a public key."""
    der = pub.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).digest()


_REJECTION_MSG = b"criusec v1 implicit rejection key"


def _rejection_key(priv):
    """The key of implicit rejection (section 3.4 step 6), as the engine
    derives it: HMAC-SHA-256 keyed with the private exponent d (big-endian,
    no leading zeros) of the fixed message; for a key that keeps d (a
    token), SHA-256 of a PKCS#1 v1.5 signature of that message.  Both only
    the private key can make, and always the same."""
    try:
        d = priv.private_numbers().d
    except (AttributeError, NotImplementedError):
        d = None
    if d:
        return hmac.new(d.to_bytes((d.bit_length() + 7) // 8, "big"), _REJECTION_MSG, hashlib.sha256).digest()
    sig = priv.sign(_REJECTION_MSG, padding.PKCS1v15(), hashes.SHA256())
    return hashlib.sha256(sig).digest()


def _unwrap(h, priv):
    """Section 3.4 steps 5-6: MK, or on any unwrap failure a substitute that
    depends only on the key and the ciphertext (the MAC check then fails
    like any other tampering).  Both are computed every time.  Python
    cannot make this constant-time: the library's decrypt raises on a bad
    padding, and the exception costs some time; the engine's unwrap is
    branch-free."""
    fpr = fingerprint(priv.public_key())
    mine = [r for r in h["recipients"] if r[0] == fpr]
    if not mine:
        raise PrivateKeyError("no recipient stanza matches the private key")
    if len(mine) > 1:
        raise FormatError("more than one recipient stanza matches the private key")
    if mine[0][1] != 1:
        raise FormatError("unsupported key wrap algorithm %d" % mine[0][1])
    wrapped = mine[0][2]
    substitute = hmac.new(_rejection_key(priv), wrapped, hashlib.sha256).digest()[:MK_LEN]
    try:
        mk = priv.decrypt(wrapped, padding.PKCS1v15())
    except ValueError:
        mk = b""
    ok = len(mk) == MK_LEN
    mk = (mk + bytes(MK_LEN))[:MK_LEN]
    # Select byte by byte with a mask rather than with an if on the outcome.
    mask = -int(ok) & 0xff
    return bytes((a & mask) | (b & ~mask & 0xff) for a, b in zip(mk, substitute))


# Loading checks the RSA key, which takes a while (0.1 s for 3072 bits):
# keep keys loaded, by file identity.
_keys = {}


def is_pkcs11_url(ref):
    return isinstance(ref, str) and ref.startswith("pkcs11:")


def _no_pkcs11(ref, what):
    """crit and pycriu read keys with Python's cryptography, which has no
    PKCS#11: a key in a token is for criu itself (Documentation/criusec.md)."""
    shown = re.sub(r"pin-value=[^;?&]*", "pin-value=(hidden)", ref)
    raise PrivateKeyError("%s %s: a PKCS#11 URL; crit and pycriu cannot use keys kept in a token (Python's "
                          "cryptography has no PKCS#11): restore with criu, or read the checkpoint with the "
                          "PEM key of another recipient (an escrow key)" % (what, shown))


def load_private_key(path):
    if is_pkcs11_url(path):
        _no_pkcs11(path, "private key")
    _need_crypto()
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            ident = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
            if ident in _keys:
                return _keys[ident]
            data = f.read()
    except OSError as e:
        raise PrivateKeyError("private key %s: %s" % (path, e.strerror)) from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise PrivateKeyError("private key %s is password-protected; give an unencrypted PEM key" % path) from None
    except ValueError:
        raise PrivateKeyError("%s is not a PEM private key" % path) from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise PrivateKeyError("private key %s is not an RSA key" % path)
    _keys[ident] = key
    return key


def default_keys(keys):
    """The keys to try: those given, else CRIU's default key if readable."""
    if keys is None or keys == []:
        return [DEFAULT_KEY] if os.access(DEFAULT_KEY, os.R_OK) else []
    if isinstance(keys, (str, bytes, os.PathLike)):
        return [os.fspath(keys)]
    return [os.fspath(k) for k in keys]
