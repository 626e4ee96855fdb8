# SPDX-License-Identifier: LGPL-2.1-only
"""Constants of the format, the errors every module of the package raises,
and small helpers they share (the optional cryptography imports among them).
"""
import datetime
import os
import re
import tempfile
import time

# The cryptography names the other modules use, imported once.
try:
    from cryptography import x509  # noqa: F401
    from cryptography.hazmat.primitives import hashes, serialization  # noqa: F401
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa  # noqa: F401
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes  # noqa: F401
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305  # noqa: F401
    from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand  # noqa: F401
    from cryptography.exceptions import InvalidSignature, InvalidTag  # noqa: F401
    HAVE_CRYPTOGRAPHY = True
except ImportError:  # plain checkpoints are still readable; the names stay importable
    HAVE_CRYPTOGRAPHY = False
    x509 = hashes = serialization = ec = ed25519 = padding = rsa = None
    Cipher = algorithms = modes = AESGCM = ChaCha20Poly1305 = HKDFExpand = None
    InvalidSignature = InvalidTag = None

MAGIC = b"CRIUSEC\x01"
STREAM_HEADER_LEN = 28
TAG_LEN = 16
ID_LEN = 16
FPR_LEN = 32
MAC_LEN = 32
MK_LEN = 32
DIGEST_LEN = 32
PAGE_SIZE = 4096
PAGE_TAG_LEN = 16
MAX_COUNTER = (1 << 64) - 1
AEAD_NAMES = {1: "aes-256-gcm", 2: "chacha20-poly1305"}
# sig_alg of a format-2 header (section 10.3)
SIG_ALGS = {0: "unsigned", 1: "rsa-pss-sha256", 2: "rsa-pkcs1-sha256", 3: "ecdsa-p256-sha256",
            4: "ecdsa-p384-sha384", 5: "ed25519"}
MAX_SIGNER_CERTS = 8
MAX_CERT_LEN = 16384
MAX_SIG_LEN = 16384
# How far in the future a signed creation time may be under --max-age.
FUTURE_SLACK = 300
V2_FIELDS = ("parent_binding", "created", "manifest_digest", "sig_alg", "signer_certs", "signature", "compress")
# Compression before encryption (section 11): cipher.img's compress, stream header byte 11
COMPRESS_NAMES = {0: "none", 1: "lz4", 2: "zstd"}
STREAM_BLOCK = 256 * 1024
STORED_FLAG = 0x80000000
REGION_PAGES = 64
MAX_REGION_PAGES = 256

DEFAULT_KEY = "/etc/pki/criu/private/key.pem"
TRUSTED_SIGNERS = "/etc/criu/trusted-signers.pem"
REQUIRED_MARKER = "/etc/criu/encryption-required"
CIPHER_IMG = "cipher.img"
MANIFEST_IMG = "cipher-manifest.img"
# The stream kind of an image is CRIU's imgset template format string.
MANIFEST_KIND = "cipher-manifest.img"
PAGE_TAGS_KIND = "pagetags"
# A plugin's own image (criu_image_open() in criu-plugin.h), any plain file name.
PLUGIN_KIND = "plugin"
# Written in plaintext under --encrypt (Documentation/criusec.md).
PLAIN_BY_DESIGN = (CIPHER_IMG, "stats-dump", "stats-restore")
PAGES_RE = re.compile(r"^pages-(\d+)\.img$")

# What a reader refused by the policy can do about it (pycriu and crit
# read no criu config file; criu itself also takes 'trust PATH' lines).
HOW_TO_TRUST = "pass --trust PEM (pycriu: trust=) or put it in %s" % TRUSTED_SIGNERS
HOW_TO_SIGN = ("dump it signed: criu --sign-key KEY --sign-cert CERT, or 'sign-key PATH' and "
               "'sign-cert PATH' in /etc/criu/default.conf")
HOW_TO_ENCRYPT = "dump it with --encrypt (or 'encrypt' in /etc/criu/default.conf)"

# pagemap entry flags (criu/include/pagemap.h)
PE_PARENT = 1 << 0
PE_LAZY = 1 << 1
PE_PRESENT = 1 << 2


class CriusecError(Exception):
    """A checkpoint cannot be read or written; the message names the image."""


class FormatError(CriusecError):
    """Bytes that are not authentic or not well-formed."""


class EncryptedImageError(CriusecError):
    """An encrypted image read without a key."""


class PrivateKeyError(CriusecError):
    """A private key that cannot be used (missing, unreadable, not a recipient)."""


class PolicyError(CriusecError):
    """A checkpoint the restore policy refuses (section 10.8): not
    encrypted, unsigned, untrusted signer, too old.  The message says what
    configuration or dump option changes that."""


class UntrustedSignerError(PolicyError):
    """A signer the trust store does not accept (section 10.4)."""


def _need_crypto():
    if not HAVE_CRYPTOGRAPHY:
        raise CriusecError("reading encrypted images needs Python's cryptography module "
                           "(Debian: apt-get install python3-cryptography)")


def _b(s):
    return s.encode() if isinstance(s, str) else bytes(s)


def _label(s, what):
    s = _b(s)
    if not 1 <= len(s) <= 4096 or b"\x00" in s:
        raise CriusecError("bad %s %r: 1..4096 bytes, no NUL" % (what, s))
    return s


def _exists(path):
    """lstat() semantics of the marker (section 10.8): anything but ENOENT
    counts as existing, so a dangling or unreadable marker fails closed."""
    try:
        os.lstat(path)
        return True
    except FileNotFoundError:
        return False
    except OSError:
        return True


def _now(now=None):
    return int(time.time()) if now is None else int(now)


def _utc(t):
    return datetime.datetime.utcfromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S UTC") \
        if 0 <= t < 253402300800 else "%d s after the epoch" % t




def replace_file(path, data, mode=0o600):
    """Write data as the file path, atomically: a fresh temporary file in
    the same directory (mkstemp: O_EXCL | O_NOFOLLOW, created 0600) renamed
    over path, so that nothing planted in a writable image directory is
    followed or overwritten in place."""
    d, name = os.path.split(os.fspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".%s." % name[:64], suffix=".crit-tmp", dir=d or ".")
    try:
        if mode != 0o600:
            os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise



def _hex(b):
    return bytes(b).hex()

