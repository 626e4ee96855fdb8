# SPDX-License-Identifier: LGPL-2.1-only
"""Reading and writing criusec (encrypted CRIU) checkpoints.

The byte formats are specified in Documentation/criusec-format.md; this
module implements them with Python's ``cryptography`` (Debian:
python3-cryptography) and is the reference reader the engine's test suite
cross-checks against (criu/criusec/tests/criusec_ref.py).

Three layers:

* primitives, on bytes: the cipher.img header of format 1 and 2
  (``canonical``, ``canonical2``, ``header_mac``, ``import_header``,
  ``parent_binding``, ``seal_header``), signatures (``Signer``,
  ``verify_signature``), image streams (``stream_seal``, ``stream_open``)
  and memory pages (``PageCipher``);
* trust: ``TrustStore`` (pinned signers and CA anchors, path validation)
  and ``Policy``, the restore policy of section 10.8;
* ``Checkpoint``: an image directory.  It finds ``cipher.img`` beside the
  images, applies the policy, verifies the signature, unwraps the
  checkpoint's key with a recipient's private key, and serves every image
  as the plaintext CRIU wrote, checked as criu checks it on restore
  (header MAC, manifest digest, each image's size and digest, stream AAD,
  chunk order, final chunk, page tags, the parent's binding).  On a plain
  checkpoint it just reads the files, where the policy allows.  It also
  edits a checkpoint and seals it again (``write_image``, ``write_pages``,
  ``reseal``), and makes new ones (``Checkpoint.create``).

Every failure raises ``CriusecError`` (or a subclass) whose message starts
with the name of the image at fault (cipher.img for the header).
"""
import calendar
import datetime
import errno
import hashlib
import hmac
import io
import os
import re
import stat
import struct
import tempfile
import time

try:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
    from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand
    from cryptography.exceptions import InvalidSignature, InvalidTag
    HAVE_CRYPTOGRAPHY = True
except ImportError:  # plain checkpoints are still readable
    HAVE_CRYPTOGRAPHY = False

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


# ---- keys (format section 2) ----

def prk_of(mk, ckpt_id):
    """HKDF-Extract(salt=ckpt_id, IKM=mk), i.e. HMAC-SHA256(ckpt_id, mk)."""
    return hmac.new(ckpt_id, mk, hashlib.sha256).digest()


def derive(prk, info, length):
    _need_crypto()
    return HKDFExpand(hashes.SHA256(), length, info).derive(prk)


def stream_key(prk, kind, name, salt):
    return derive(prk, b"criusec v1 stream\x00" + _b(kind) + b"\x00" + _b(name) + b"\x00" + salt, 32)


# ---- the cipher.img header (sections 3 and 10) ----
#
# A header is a dict: version, ckpt_id, has_parent, parent_id, aead,
# chunk_size, recipients (a list of (fingerprint, wrap_alg, wrapped)), mac;
# format 2 adds created, parent_binding, manifest_digest, sig_alg,
# signer_certs (a list of DER certificates), signature.  decode_cipher_img()
# also lists in v2_fields the format-2 fields that were present on disk.

def _recipients(h):
    out = struct.pack(">I", len(h["recipients"]))
    for fpr, alg, wrapped in h["recipients"]:
        out += fpr + struct.pack(">II", alg, len(wrapped)) + wrapped
    return out


def canonical(h):
    """Section 3.2: the bytes a version-1 header's MAC covers."""
    out = b"criusec-header-v1\x00" + struct.pack(">I", h["version"]) + h["ckpt_id"]
    if h["has_parent"]:
        out += b"\x01" + h["parent_id"]
    else:
        out += b"\x00"
    return out + struct.pack(">II", h["aead"], h["chunk_size"]) + _recipients(h)


def canonical2(h):
    """Section 10.2: the bytes a version-2 header's signature covers."""
    out = b"criusec-header-v2\x00" + struct.pack(">I", h["version"]) + h["ckpt_id"] + struct.pack(">Q", h["created"])
    if h["has_parent"]:
        out += b"\x01" + h["parent_id"] + h["parent_binding"]
    else:
        out += b"\x00"
    out += struct.pack(">III", h["aead"], h["chunk_size"], h.get("compress") or 0)
    out += h["manifest_digest"] + _recipients(h)
    certs = h.get("signer_certs") or []
    out += struct.pack(">II", h.get("sig_alg") or 0, len(certs))
    for der in certs:
        out += struct.pack(">I", len(der)) + der
    return out


def mac_input(h):
    """What the header MAC covers: canonical (format 1), or canonical2 followed
    by the length-prefixed signature (format 2)."""
    if h["version"] == 1:
        return canonical(h)
    sig = h.get("signature") or b""
    return canonical2(h) + struct.pack(">I", len(sig)) + sig


def header_mac(prk, h):
    return hmac.new(derive(prk, b"criusec v1 header mac", 32), mac_input(h), hashlib.sha256).digest()


def parent_binding(parent_prk, parent_id, ckpt_id):
    """Section 10.5: what only holders of the parent's keys can compute."""
    key = derive(parent_prk, b"criusec v1 child binding", 32)
    return hmac.new(key, b"criusec-child-v1\x00" + parent_id + ckpt_id, hashlib.sha256).digest()


def fingerprint(pub):
    """SHA-256 of the DER SubjectPublicKeyInfo of a public key."""
    der = pub.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).digest()


def valid_chunk_size(c):
    return 4096 <= c <= 1 << 20 and not c & (c - 1)


def check_header(h):
    """Steps 1-4 of section 3.4 and the constraints of 10.1: the fields,
    before any key is used."""
    if h["version"] not in (1, 2):
        raise FormatError("unsupported cipher.img header version %d" % h["version"])
    if h["aead"] not in AEAD_NAMES:
        raise FormatError("unknown AEAD %d in cipher.img header" % h["aead"])
    if not valid_chunk_size(h["chunk_size"]):
        raise FormatError("invalid chunk size %d in cipher.img header" % h["chunk_size"])
    if (h.get("compress") or 0) not in COMPRESS_NAMES:
        raise FormatError("unknown compression %d in cipher.img header" % h["compress"])
    if not 1 <= len(h["recipients"]) <= 1024:
        raise FormatError("cipher.img header has %d recipients (1..1024)" % len(h["recipients"]))
    if h["has_parent"] not in (0, 1, False, True):
        raise FormatError("malformed cipher.img header")
    for fpr, _, wrapped in h["recipients"]:
        if len(fpr) != FPR_LEN or not 1 <= len(wrapped) <= 16384:
            raise FormatError("malformed recipient stanza in cipher.img header")
    if len(h["ckpt_id"]) != ID_LEN or len(h["mac"]) != MAC_LEN or \
            (h["has_parent"] and len(h["parent_id"]) != ID_LEN):
        raise FormatError("malformed cipher.img header")
    if h["version"] == 1:
        if h.get("v2_fields"):
            raise FormatError("malformed cipher.img header (version 1 with format-2 fields: %s)"
                              % ", ".join(h["v2_fields"]))
        return
    if h.get("created") is None or not 0 <= h["created"] < 1 << 64:
        raise FormatError("malformed cipher.img header (version 2 without its creation time)")
    if len(h.get("manifest_digest") or b"") != DIGEST_LEN:
        raise FormatError("malformed cipher.img header (version 2 without a manifest digest)")
    if h["has_parent"] and len(h.get("parent_binding") or b"") != DIGEST_LEN:
        raise FormatError("malformed cipher.img header (a parent without its binding)")
    if not h["has_parent"] and h.get("parent_binding") is not None:
        raise FormatError("malformed cipher.img header (a parent binding without a parent)")
    alg, certs, sig = h.get("sig_alg") or 0, h.get("signer_certs") or [], h.get("signature") or b""
    if alg not in SIG_ALGS:
        raise FormatError("unsupported signature algorithm %d in cipher.img header" % alg)
    if len(certs) > MAX_SIGNER_CERTS or any(not 1 <= len(c) <= MAX_CERT_LEN for c in certs) or \
            len(sig) > MAX_SIG_LEN:
        raise FormatError("malformed cipher.img header (signer certificates or signature too large)")
    if alg == 0 and (certs or sig):
        raise FormatError("malformed cipher.img header (unsigned, but with a signature or signer certificates)")
    if alg != 0 and (not certs or not sig):
        raise FormatError("malformed cipher.img header (signed, but without signature or signer certificate)")


def _rejection_key(priv):
    """The key of implicit rejection (section 3.4 step 6), as the engine
    derives it: SHA-256 of a PKCS#1 v1.5 signature of a fixed message, which
    only the private key can make, and always the same."""
    sig = priv.sign(b"criusec v1 implicit rejection key", padding.PKCS1v15(), hashes.SHA256())
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


def import_header(h, priv):
    """Section 3.4 (and 10.7 step 3): unwrap and return the master key, or
    raise FormatError.  The signature of a format-2 header is checked by
    Policy.check(), which must come first."""
    _need_crypto()
    check_header(h)
    mk = _unwrap(h, priv)
    if not hmac.compare_digest(header_mac(prk_of(mk, h["ckpt_id"]), h), h["mac"]):
        raise FormatError("cipher.img header authentication failed (altered, or not for this key)")
    return mk


def recipient_stanza(mk, recipient, now=None, unchecked=False):
    """(fingerprint, wrap_alg 1, wrapped MK) for an RSA public key or
    certificate.  A certificate must be valid at now and, if it has a
    keyUsage extension, allow keyEncipherment, unless unchecked (issue 11.8)."""
    _need_crypto()
    if hasattr(recipient, "public_key") and not unchecked:
        problem = _validity_problem(recipient, _now(now), "recipient certificate %s" % cert_subject(recipient))
        usage = _ext(recipient, x509.KeyUsage)
        if not problem and usage is not None and not usage.key_encipherment:
            problem = "recipient certificate %s is not allowed to receive wrapped keys (keyUsage lacks " \
                      "keyEncipherment)" % cert_subject(recipient)
        if problem:
            raise PolicyError(problem)
    pub = recipient.public_key() if hasattr(recipient, "public_key") else recipient
    if not isinstance(pub, rsa.RSAPublicKey) or pub.key_size < 2048:
        raise CriusecError("recipients must be RSA keys of at least 2048 bits")
    return (fingerprint(pub), 1, pub.encrypt(mk, padding.PKCS1v15()))


def new_header(mk, ckpt_id, recipients, aead=1, chunk_size=65536, created=None, parent=None,
               manifest_digest=bytes(DIGEST_LEN), compress=0):
    """A format-2 header dict, not yet sealed (see seal_header).

    recipients: RSA public keys or certificates (MK is wrapped for each), or
    ready stanzas (fingerprint, wrap_alg, wrapped).  parent: None, a
    Checkpoint (its id and the binding under its key), or
    (parent_id, parent_binding) as bytes."""
    h = {"version": 2, "ckpt_id": bytes(ckpt_id), "aead": aead, "chunk_size": chunk_size, "compress": compress,
         "created": _now(created), "manifest_digest": bytes(manifest_digest), "mac": bytes(MAC_LEN),
         "recipients": [r if isinstance(r, tuple) else recipient_stanza(mk, r) for r in recipients]}
    _set_parent(h, parent)
    return h


def _set_parent(h, parent):
    if parent is None or parent is False:
        h.update(has_parent=0, parent_id=b"", parent_binding=None)
    elif isinstance(parent, tuple):
        h.update(has_parent=1, parent_id=bytes(parent[0]), parent_binding=bytes(parent[1]))
    else:
        h.update(has_parent=1, parent_id=parent.ckpt_id,
                 parent_binding=parent_binding(parent.prk, parent.ckpt_id, h["ckpt_id"]))


def seal_header(h, mk, signer=None):
    """Sign (with a Signer; None: unsigned) and MAC a format-2 header in place; returns it."""
    h["version"] = 2
    h.pop("v2_fields", None)
    if signer is None:
        h.update(sig_alg=0, signer_certs=[], signature=b"")
    else:
        h.update(sig_alg=signer.alg, signer_certs=list(signer.chain), signature=b"")
        h["signature"] = signer.sign(canonical2(h))
    check_header(h)
    h["mac"] = header_mac(prk_of(mk, h["ckpt_id"]), h)
    return h


def _one_entry(data, magic_name, message):
    """The protobuf message of a CRIU image holding exactly one entry, or None."""
    from .images import magic
    try:
        m1, m2, size = struct.unpack_from("<iiI", data, 0)
        if m1 != magic.by_name["IMG_COMMON"] or m2 != magic.by_name[magic_name] or len(data) != 12 + size:
            return None
        e = message()
        e.ParseFromString(bytes(data[12:]))
        return e
    except Exception:
        return None


def _image_of(magic_name, message):
    """A CRIU image of one entry (as criu's pb_write_one writes it)."""
    from .images import magic
    body = message.SerializeToString()
    return struct.pack("<iiI", magic.by_name["IMG_COMMON"], magic.by_name[magic_name], len(body)) + body


def decode_cipher_img(data):
    """cipher.img (a plain CRIU image of one cipher_entry) as a header dict."""
    from .images import pb
    ce = _one_entry(data, "CIPHER", pb.cipher_entry)
    if ce is None:
        raise FormatError("cipher.img: malformed header")
    present = [f for f in V2_FIELDS if (len(getattr(ce, f)) if f == "signer_certs" else ce.HasField(f))]
    return {
        "version": ce.version, "ckpt_id": ce.ckpt_id, "has_parent": 1 if ce.HasField("parent_id") else 0,
        "parent_id": ce.parent_id, "aead": ce.aead, "chunk_size": ce.chunk_size,
        "recipients": [(r.fingerprint, r.wrap_alg, r.wrapped_key) for r in ce.recipients], "mac": ce.mac,
        "created": ce.created if ce.HasField("created") else None,
        "parent_binding": ce.parent_binding if ce.HasField("parent_binding") else None,
        "manifest_digest": ce.manifest_digest if ce.HasField("manifest_digest") else None,
        "sig_alg": ce.sig_alg, "signer_certs": list(ce.signer_certs), "signature": ce.signature,
        "compress": ce.compress, "v2_fields": present,
    }


def encode_cipher_img(h):
    """The cipher.img file of a header dict.  Format 2 always writes created,
    manifest_digest and sig_alg; signer_certs and signature only when signed."""
    from .images import pb
    ce = pb.cipher_entry(version=h["version"], ckpt_id=h["ckpt_id"], aead=h["aead"], chunk_size=h["chunk_size"],
                         mac=h["mac"])
    if h["has_parent"]:
        ce.parent_id = h["parent_id"]
    for fpr, alg, wrapped in h["recipients"]:
        ce.recipients.add(fingerprint=fpr, wrap_alg=alg, wrapped_key=wrapped)
    if h["version"] >= 2:
        if h["has_parent"]:
            ce.parent_binding = h["parent_binding"]
        ce.created = h["created"]
        ce.manifest_digest = h["manifest_digest"]
        ce.sig_alg = h.get("sig_alg") or 0
        ce.compress = h.get("compress") or 0
        ce.signer_certs.extend(h.get("signer_certs") or [])
        if h.get("signature"):
            ce.signature = h["signature"]
    return _image_of("CIPHER", ce)


# ---- signatures (section 10.3) ----

def _cert(der, what="signer certificate"):
    _need_crypto()
    try:
        return x509.load_der_x509_certificate(bytes(der))
    except ValueError:
        raise FormatError("cipher.img: %s is not a DER X.509 certificate" % what) from None


def cert_subject(cert):
    """RFC 4514 subject of a certificate (object or DER)."""
    if isinstance(cert, (bytes, bytearray)):
        cert = _cert(cert)
    return cert.subject.rfc4514_string() or "(empty subject)"


def _ts(dt):
    return calendar.timegm(dt.utctimetuple())


def _key_name(pub):
    if isinstance(pub, rsa.RSAPublicKey):
        return "RSA-%d" % pub.key_size
    if isinstance(pub, ec.EllipticCurvePublicKey):
        return "EC %s" % pub.curve.name
    if isinstance(pub, ed25519.Ed25519PublicKey):
        return "Ed25519"
    return type(pub).__name__


def alg_matches_key(alg, pub):
    """Whether sig_alg `alg` is the one for the type (and curve) of public key pub."""
    if alg in (1, 2):
        return isinstance(pub, rsa.RSAPublicKey) and pub.key_size >= 2048
    if alg in (3, 4):
        return isinstance(pub, ec.EllipticCurvePublicKey) and \
            pub.curve.name == ("secp256r1" if alg == 3 else "secp384r1")
    return alg == 5 and isinstance(pub, ed25519.Ed25519PublicKey)


def _pss():
    return padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)


def verify_signature(alg, leaf_der, data, sig):
    """Verify sig over data with the key of the DER certificate leaf_der
    under sig_alg alg (section 10.3).  No trust decision (TrustStore).
    Raises FormatError."""
    pub = _cert(leaf_der).public_key()
    if alg not in SIG_ALGS or alg == 0:
        raise FormatError("cipher.img: unsupported signature algorithm %d" % alg)
    if not alg_matches_key(alg, pub):
        raise FormatError("cipher.img: signature algorithm %s does not match the signer's %s key"
                          % (SIG_ALGS[alg], _key_name(pub)))
    try:
        if alg == 1:
            pub.verify(bytes(sig), bytes(data), _pss(), hashes.SHA256())
        elif alg == 2:
            pub.verify(bytes(sig), bytes(data), padding.PKCS1v15(), hashes.SHA256())
        elif alg in (3, 4):
            pub.verify(bytes(sig), bytes(data), ec.ECDSA(hashes.SHA256() if alg == 3 else hashes.SHA384()))
        else:
            pub.verify(bytes(sig), bytes(data))
    except InvalidSignature:
        raise FormatError("cipher.img: the signature does not verify (header altered, or not signed "
                          "by its signer certificate's key)") from None


def _ext(cert, cls):
    """The value of a certificate's extension, or None."""
    try:
        return cert.extensions.get_extension_for_class(cls).value
    except x509.ExtensionNotFound:
        return None


def _validity_problem(cert, now, what):
    if now < _ts(cert.not_valid_before):
        return "%s is not yet valid (notBefore %s)" % (what, _utc(_ts(cert.not_valid_before)))
    if now > _ts(cert.not_valid_after):
        return "%s has expired (notAfter %s)" % (what, _utc(_ts(cert.not_valid_after)))
    return None


def _signing_cert_problem(cert, now):
    """Section 10.4 steps 2-3 for a signer certificate: a reason, or None."""
    what = "signer certificate %s" % cert_subject(cert)
    ku = _ext(cert, x509.KeyUsage)
    if ku is not None and not ku.digital_signature:
        return "%s is not allowed to sign (its keyUsage lacks digitalSignature)" % what
    return _validity_problem(cert, now, what)


def _pem_certs(data, origin):
    """The certificates of a PEM buffer, in order."""
    blocks = re.findall(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", data, re.S)
    if not blocks:
        raise CriusecError("%s holds no PEM certificate" % origin)
    try:
        return [x509.load_pem_x509_certificate(b) for b in blocks]
    except ValueError:
        raise CriusecError("%s: a PEM certificate that cannot be parsed" % origin) from None


def _read_file(path, what):
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise CriusecError("%s %s: %s" % (what, path, e.strerror)) from None


def load_signing_key(path):
    """A PEM private key of any type of section 10.3."""
    if is_pkcs11_url(path):
        _no_pkcs11(path, "signing key")
    _need_crypto()
    data = _read_file(path, "signing key")
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise CriusecError("signing key %s is password-protected; give an unencrypted PEM key" % path) from None
    except ValueError:
        raise CriusecError("%s is not a PEM private key" % path) from None


class Signer:
    """A signing key and its certificate chain (the signer's first), as a
    dump signs (section 10.3): sig_alg by the key's type (RSA: PSS, or
    alg=2 for PKCS#1 v1.5), after checking that the certificate is the
    key's and may sign at `now`."""

    def __init__(self, key, chain, alg=None, now=None):
        _need_crypto()
        certs = [c if isinstance(c, x509.Certificate) else x509.load_der_x509_certificate(bytes(c)) for c in chain]
        if not 1 <= len(certs) <= MAX_SIGNER_CERTS:
            raise CriusecError("a signer chain has 1..%d certificates, not %d" % (MAX_SIGNER_CERTS, len(certs)))
        pub = key.public_key()
        leaf_pub = certs[0].public_key()
        spki = serialization.PublicFormat.SubjectPublicKeyInfo
        if leaf_pub.public_bytes(serialization.Encoding.DER, spki) != \
                pub.public_bytes(serialization.Encoding.DER, spki):
            raise CriusecError("signer certificate %s is not the signing key's" % cert_subject(certs[0]))
        if alg is None:
            alg = next((a for a in (1, 3, 4, 5) if alg_matches_key(a, pub)), None)
        if alg is None or not alg_matches_key(alg, pub):
            raise CriusecError("a %s key cannot sign a checkpoint%s (RSA >= 2048 bits, EC P-256 or P-384, "
                               "Ed25519)" % (_key_name(pub), "" if alg is None else " with " + SIG_ALGS[alg]))
        problem = _signing_cert_problem(certs[0], _now(now))
        if problem:
            raise CriusecError(problem)
        self.key, self.alg = key, alg
        self.chain = [c.public_bytes(serialization.Encoding.DER) for c in certs]
        self.subject = cert_subject(certs[0])

    @classmethod
    def from_files(cls, key_path, cert_path, alg=None, now=None):
        key = load_signing_key(key_path)
        return cls(key, _pem_certs(_read_file(cert_path, "signer certificate"), cert_path), alg, now)

    def sign(self, data):
        data = bytes(data)
        if self.alg == 1:
            return self.key.sign(data, _pss(), hashes.SHA256())
        if self.alg == 2:
            return self.key.sign(data, padding.PKCS1v15(), hashes.SHA256())
        if self.alg in (3, 4):
            return self.key.sign(data, ec.ECDSA(hashes.SHA256() if self.alg == 3 else hashes.SHA384()))
        return self.key.sign(data)


# ---- trust (section 10.4) ----

def _cert_signed_by(cert, issuer):
    """Whether issuer's key made cert's signature.  Certificates signed with
    RSA PKCS#1 v1.5, ECDSA (SHA-2) or Ed25519 only: cryptography 38 has no
    path validation, and this module checks only what it can check."""
    from cryptography.x509.oid import SignatureAlgorithmOID as S
    oid, pub = cert.signature_algorithm_oid, issuer.public_key()
    what = "certificate %s" % cert_subject(cert)
    if oid == S.RSASSA_PSS:
        raise UntrustedSignerError("%s is signed with RSA-PSS, which is not supported by pycriu" % what)
    if oid in (S.RSA_WITH_MD5, S.RSA_WITH_SHA1, S.ECDSA_WITH_SHA1, S.DSA_WITH_SHA1):
        raise UntrustedSignerError("%s is signed with a weak algorithm (%s)" % (what, oid._name))
    try:
        if oid in (S.RSA_WITH_SHA224, S.RSA_WITH_SHA256, S.RSA_WITH_SHA384, S.RSA_WITH_SHA512):
            if not isinstance(pub, rsa.RSAPublicKey):
                return False
            pub.verify(cert.signature, cert.tbs_certificate_bytes, padding.PKCS1v15(), cert.signature_hash_algorithm)
        elif oid in (S.ECDSA_WITH_SHA224, S.ECDSA_WITH_SHA256, S.ECDSA_WITH_SHA384, S.ECDSA_WITH_SHA512):
            if not isinstance(pub, ec.EllipticCurvePublicKey):
                return False
            pub.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm))
        elif oid == S.ED25519:
            if not isinstance(pub, ed25519.Ed25519PublicKey):
                return False
            pub.verify(cert.signature, cert.tbs_certificate_bytes)
        else:
            raise UntrustedSignerError("%s is signed with %s, which is not supported by pycriu"
                                       % (what, getattr(oid, "_name", oid.dotted_string)))
    except InvalidSignature:
        return False
    return True


def _issuer_problem(ca, now, below):
    """Why ca may not issue a certificate with `below` intermediates under it, or None."""
    what = "issuer %s" % cert_subject(ca)
    bc, ku = _ext(ca, x509.BasicConstraints), _ext(ca, x509.KeyUsage)
    if bc is None or not bc.ca:
        return "%s is not a CA (basicConstraints CA:TRUE)" % what
    if bc.path_length is not None and below > bc.path_length:
        return "%s allows %d intermediate CAs under it, the chain has %d" % (what, bc.path_length, below)
    if ku is not None and not ku.key_cert_sign:
        return "%s is not allowed to sign certificates (keyUsage lacks keyCertSign)" % what
    return _validity_problem(ca, now, what)


def _is_ca(cert):
    bc = _ext(cert, x509.BasicConstraints)
    return bool(bc and bc.ca)


class TrustStore:
    """Trusted certificates from PEM files (section 10.4).  Each one is a
    pinned signer (accepted when it is the signer's certificate, byte for
    byte); the CAs among them (basicConstraints CA:TRUE) are also anchors
    for the signer's chain."""

    def __init__(self, paths=()):
        _need_crypto()
        self.paths = []
        self.certs = []  # (DER, certificate)
        for p in paths:
            self.add_file(p)

    def add_file(self, path):
        path = os.fspath(path)
        self.add_pem(_read_file(path, "trust file"), "trust file %s" % path)
        self.paths.append(path)

    def add_pem(self, data, origin="trust file"):
        for c in _pem_certs(data, origin):
            self.certs.append((c.public_bytes(serialization.Encoding.DER), c))

    def subjects(self):
        return [cert_subject(c) for _, c in self.certs]

    def __len__(self):
        return len(self.certs)

    def verify(self, chain, now=None):
        """How the chain (DER, the signer's first) is trusted at `now`:
        "pinned" or "CA <anchor subject>"; else UntrustedSignerError with
        the reason."""
        now = _now(now)
        certs = [_cert(d, "signer certificate %d" % i) for i, d in enumerate(chain)]
        if not certs:
            raise UntrustedSignerError("the checkpoint is unsigned")
        problem = _signing_cert_problem(certs[0], now)
        if problem:
            raise UntrustedSignerError(problem)
        if any(bytes(chain[0]) == der for der, _ in self.certs):
            return "pinned"
        anchors = [c for _, c in self.certs if _is_ca(c)]
        cur = certs[0]
        for depth in range(len(certs)):
            for ca in anchors:
                if ca.subject == cur.issuer and _cert_signed_by(cur, ca):
                    problem = _issuer_problem(ca, now, depth)
                    if problem:
                        raise UntrustedSignerError("trust anchor: " + problem)
                    return "CA " + cert_subject(ca)
            if depth + 1 == len(certs):
                break
            nxt = certs[depth + 1]
            if nxt.subject != cur.issuer or not _cert_signed_by(cur, nxt):
                raise UntrustedSignerError("signer chain: %s is not issued by the next certificate, %s"
                                           % (cert_subject(cur), cert_subject(nxt)))
            problem = _issuer_problem(nxt, now, depth)
            if problem:
                raise UntrustedSignerError("signer chain: " + problem)
            cur = nxt
        if not anchors:
            raise UntrustedSignerError("unknown signer %s (not a pinned certificate, and the trust files hold no CA)"
                                       % cert_subject(certs[0]))
        raise UntrustedSignerError("signer %s is not signed by a trusted CA (its chain ends at %s, issued by %s)"
                                   % (cert_subject(certs[0]), cert_subject(cur), cur.issuer.rfc4514_string()))


# ---- the restore policy (section 10.8) ----

class Policy:
    """Which checkpoints a reader accepts.

    trust: PEM file path(s) of trusted signers, or a TrustStore; None (or
    []): TRUSTED_SIGNERS when it exists.  The reader then *requires
    protection*, as it also does while REQUIRED_MARKER exists (or when
    required=True).  max_age: refuse checkpoints signed more than that many
    seconds ago (or more than FUTURE_SLACK in the future), and unsigned
    ones.  now: the time of the checks (default: each check's)."""

    def __init__(self, trust=None, max_age=None, now=None, required=None):
        if isinstance(trust, TrustStore):
            self.store = trust
        else:
            if isinstance(trust, (str, bytes, os.PathLike)):
                trust = [trust]
            paths = [os.fspath(p) for p in trust or []]
            if not paths and _exists(TRUSTED_SIGNERS):
                paths = [TRUSTED_SIGNERS]
            self.store = TrustStore(paths) if paths else None
        self.marker = _exists(REQUIRED_MARKER)
        self.required = bool(self.store) or self.marker if required is None else bool(required)
        self.max_age = max_age
        self.now = now

    @classmethod
    def permissive(cls):
        """No trust, nothing required, whatever the host configures."""
        return cls(trust=TrustStore(), required=False)

    def why_required(self):
        if self.store:
            return "signers are trusted from %s" % ", ".join(self.store.paths or ["a trust store"])
        if self.marker:
            return "%s exists" % REQUIRED_MARKER
        return "protection is required"

    def check_plain(self, what):
        """A checkpoint without cipher.img."""
        if self.required:
            raise PolicyError("%s: not an encrypted checkpoint (no %s), refused because %s: %s"
                              % (what, CIPHER_IMG, self.why_required(), HOW_TO_ENCRYPT))

    def evaluate(self, h):
        """What the policy makes of a checked header (check_header): a dict
        with signature ("unsigned", "verified" or "failed"), signer, chain
        (subjects), alg, trusted ("pinned", "CA ..." or None), trust (why
        not trusted), created, and refusal: the exception that refuses the
        checkpoint, or None."""
        r = {"signature": "unsigned", "alg": SIG_ALGS[h.get("sig_alg") or 0], "signer": None, "chain": [],
             "trusted": None, "trust": None, "created": h.get("created"), "refusal": None}
        now = _now(self.now)

        def refuse(exc):
            if r["refusal"] is None:
                r["refusal"] = exc

        if self.required and not self.store:
            refuse(PolicyError("cipher.img: %s requires trusted signatures, but no signer is trusted: %s"
                               % (REQUIRED_MARKER, HOW_TO_TRUST)))
        certs = h.get("signer_certs") or []
        if h["version"] == 1 or not h.get("sig_alg"):
            what = "format-1 checkpoint (no signature)" if h["version"] == 1 else "unsigned checkpoint"
            r["trust"] = "unsigned"
            if self.required:
                refuse(PolicyError("cipher.img: %s refused because %s: %s" % (what, self.why_required(), HOW_TO_SIGN)))
            if self.max_age is not None:
                refuse(PolicyError("cipher.img: %s refused: a maximum age needs a signed creation time: %s"
                                   % (what, HOW_TO_SIGN)))
            return r
        try:
            r["chain"] = [cert_subject(d) for d in certs]
            r["signer"] = r["chain"][0]
            verify_signature(h["sig_alg"], certs[0], canonical2(h), h["signature"])
            r["signature"] = "verified"
        except FormatError as e:
            r["signature"] = "failed"
            r["refusal"] = e  # tampering comes before any policy reason
            return r
        if self.store:
            try:
                r["trusted"] = self.store.verify(certs, now)
            except UntrustedSignerError as e:
                r["trust"] = str(e)
                refuse(UntrustedSignerError("cipher.img: untrusted signer: %s; to trust it, %s" % (e, HOW_TO_TRUST)))
        else:
            r["trust"] = "no trust configured"
        if self.max_age is not None:
            age = now - h["created"]
            if age > self.max_age:
                refuse(PolicyError("cipher.img: the checkpoint was signed %d s ago (%s), more than the maximum "
                                   "age of %d s" % (age, _utc(h["created"]), self.max_age)))
            elif -age > FUTURE_SLACK:
                refuse(PolicyError("cipher.img: the checkpoint's creation time is %d s in the future (%s)"
                                   % (-age, _utc(h["created"]))))
        return r

    def check(self, h):
        """evaluate(h), raising its refusal."""
        r = self.evaluate(h)
        if r["refusal"] is not None:
            raise r["refusal"]
        return r


# ---- streams (section 4) ----

def nonce(counter, last):
    return counter.to_bytes(11, "big") + (b"\x01" if last else b"\x00")


def _aead(aead, key):
    _need_crypto()
    return (AESGCM if aead == 1 else ChaCha20Poly1305)(key)


class BlockCodec:
    """Section 11.1: one LZ4 block or one zstd frame, bounded on both sides.
    python3-lz4 and python3-zstandard (Debian packages) are needed only for
    checkpoints that compress."""

    def __init__(self, alg):
        if alg not in (1, 2):
            raise FormatError("unknown compression %d" % alg)
        self.alg = alg
        try:
            if alg == 1:
                import lz4.block
                self.lz4 = lz4.block
            else:
                import zstandard
                self.zstd = zstandard
        except ImportError:
            raise CriusecError("the checkpoint is compressed with %s: install python3-%s" %
                               (COMPRESS_NAMES[alg], "lz4" if alg == 1 else "zstandard")) from None

    def compress(self, data, limit):
        """The compressed bytes, or None when they would not be shorter than limit."""
        c = self.lz4.compress(bytes(data), store_size=False) if self.alg == 1 else \
            self.zstd.ZstdCompressor(level=1).compress(bytes(data))
        return c if len(c) < limit else None

    def decompress(self, data, size, exact):
        """At most size bytes (exactly size when exact), or FormatError."""
        data = bytes(data)
        try:
            if self.alg == 1:
                out = self.lz4.decompress(data, uncompressed_size=size)
            else:
                # One frame, all of data, no larger than size (whatever the frame claims).
                fcs = self.zstd.frame_content_size(data)
                if fcs > size:
                    raise ValueError("frame content size %d" % fcs)
                d = self.zstd.ZstdDecompressor().decompressobj()
                out = d.decompress(data)
                if not d.eof or d.unused_data or len(out) > size:
                    raise ValueError("not one whole frame")
        except Exception as e:
            raise FormatError("%s block does not decompress (%s)" % (COMPRESS_NAMES[self.alg], e)) from None
        if not out or (exact and len(out) != size):
            raise FormatError("compressed block decompresses to %d bytes, not %d" % (len(out), size))
        return out


def blocks_encode(alg, pt):
    """Section 11.2: the content of a compressed stream."""
    codec, out = BlockCodec(alg), []
    for i in range(0, len(pt), STREAM_BLOCK):
        b = bytes(pt[i:i + STREAM_BLOCK])
        c = codec.compress(b, len(b))
        out.append(struct.pack(">I", len(c)) + c if c is not None else struct.pack(">I", STORED_FLAG | len(b)) + b)
    return b"".join(out)


def blocks_decode(alg, data):
    """The plaintext of a compressed stream's content, or FormatError."""
    codec, out, pos, short = BlockCodec(alg), [], 0, False
    data = memoryview(data)
    while pos < len(data):
        if len(data) - pos < 4:
            raise FormatError("compressed stream truncated (block %d cut short)" % len(out))
        h, = struct.unpack_from(">I", data, pos)
        n = h & ~STORED_FLAG
        if short:
            raise FormatError("compressed stream: block %d follows a short block" % len(out))
        if not 0 < n <= STREAM_BLOCK or (not h & STORED_FLAG and n == STREAM_BLOCK):
            raise FormatError("compressed stream: block %d has a bad length" % len(out))
        if len(data) - pos - 4 < n:
            raise FormatError("compressed stream truncated (block %d cut short)" % len(out))
        payload = data[pos + 4:pos + 4 + n]
        b = bytes(payload) if h & STORED_FLAG else codec.decompress(payload, STREAM_BLOCK, False)
        short = len(b) < STREAM_BLOCK
        out.append(b)
        pos += 4 + n
    return b"".join(out)


def stream_seal(mk, ckpt_id, aead, chunk, kind, name, pt, salt=None, compress=0):
    """Seal plaintext pt as one stream (header || sealed chunks), its content
    compressed (section 11.2) when compress is not 0."""
    kind, name = _label(kind, "kind"), _label(name, "name")
    if aead not in AEAD_NAMES or not valid_chunk_size(chunk) or compress not in COMPRESS_NAMES:
        raise CriusecError("bad stream parameters")
    salt = os.urandom(16) if salt is None else salt
    hdr = MAGIC + bytes([1, aead, chunk.bit_length() - 1, compress]) + salt
    if compress:
        pt = blocks_encode(compress, pt)
    a = _aead(aead, stream_key(prk_of(mk, ckpt_id), kind, name, salt))
    aad = hdr + ckpt_id + kind + b"\x00" + name
    n = max(1, -(-len(pt) // chunk))
    out = [hdr]
    for i in range(n):
        out.append(a.encrypt(nonce(i, i == n - 1), bytes(pt[i * chunk:(i + 1) * chunk]), aad))
    return b"".join(out)


def stream_open(mk, ckpt_id, aead, chunk, kind, name, data, compress=0):
    """Authenticate and decrypt a whole stream (section 4.4), or raise
    FormatError; compress is the checkpoint's (section 11.2)."""
    kind, name = _label(kind, "kind"), _label(name, "name")
    data = memoryview(data)
    if not len(data):
        raise FormatError("stream truncated (empty input)")
    if bytes(data[:8]) != MAGIC[:min(8, len(data))]:
        raise FormatError("not an encrypted image (bad magic)")
    if len(data) < STREAM_HEADER_LEN:
        raise FormatError("stream truncated (incomplete stream header)")
    hdr = bytes(data[:STREAM_HEADER_LEN])
    if hdr[8] != 1:
        raise FormatError("unsupported stream version %d" % hdr[8])
    if hdr[9] not in AEAD_NAMES:
        raise FormatError("unknown stream AEAD %d" % hdr[9])
    if hdr[9] != aead:
        raise FormatError("stream AEAD %d is not the checkpoint's (%d)" % (hdr[9], aead))
    if not 12 <= hdr[10] <= 20 or 1 << hdr[10] != chunk:
        raise FormatError("stream chunk size 2^%d is not the checkpoint's (%d)" % (hdr[10], chunk))
    if hdr[11] not in (0, compress):
        raise FormatError("bad stream header (compression %d%s)" % (
            hdr[11], " in a checkpoint without compression" if not compress else " differs from the checkpoint's"))
    a = _aead(aead, stream_key(prk_of(mk, ckpt_id), kind, name, hdr[12:28]))
    aad = hdr + ckpt_id + kind + b"\x00" + name

    def try_open(i, last, ct):
        try:
            return a.decrypt(nonce(i, last), ct, aad)
        except InvalidTag:
            return None

    S = chunk + TAG_LEN
    pos, i, out = STREAM_HEADER_LEN, 0, []
    while True:
        if i >= MAX_COUNTER:
            raise FormatError("chunk counter overflow")
        rest = len(data) - pos
        if rest > S:
            ct = bytes(data[pos:pos + S])
            pt = try_open(i, False, ct)
            if pt is None:
                if try_open(i, True, ct) is not None:
                    raise FormatError("trailing data after final chunk")
                raise FormatError("chunk %d failed authentication" % i)
            out.append(pt)
            pos, i = pos + S, i + 1
            continue
        if rest == 0:
            raise FormatError("stream truncated (no final chunk)")
        if rest < TAG_LEN or (rest == TAG_LEN and i > 0):
            raise FormatError("stream truncated (partial chunk %d)" % i)
        ct = bytes(data[pos:])
        pt = try_open(i, True, ct)
        if pt is None:
            if rest == S and try_open(i, False, ct) is not None:
                raise FormatError("stream truncated (no final chunk)")
            raise FormatError("chunk %d failed authentication" % i)
        out.append(pt)
        content = b"".join(out)
        return blocks_decode(hdr[11], content) if hdr[11] else content


def is_stream(head):
    return bytes(head[:8]) == MAGIC


# ---- memory pages ----
#
# Every 4096-byte page of pages-<N>.img is encrypted on its own, in place:
#   xts_key = derive("criusec v1 pages xts" || 0x00 || name, 64)
#   tag_key = derive("criusec v1 pages tag" || 0x00 || name, 32)
#   ciphertext = AES-256-XTS(xts_key, tweak = LE64(v) || LE64(i), page)
#   tag = AES-256-GCM(tag_key, nonce = LE64(i) || 0^4, no plaintext,
#                     AAD = LE64(v) || LE64(i) || ciphertext)
# v is the page's virtual address (for shmem, its offset in the segment),
# i its number in the image (file offset / 4096), name the image's file
# name.  The tags, 16 bytes per page in order, are the plaintext of the
# stream image pagetags-<N>.img (kind "pagetags").

# A checkpoint that compresses (section 11.3) cuts each page image into
# regions of consecutive pages; pagetags-<N>.img then holds one record per
# region, u32(pages) || u32(stored), with an XTS region's tags after it.  A
# compressed region (stored != 0) is stored bytes of
#   AEAD(derive("criusec v1 pages region" || 0x00 || name, 32), u88(r) || 0x00,
#        AAD = "criusec-region-v1" || 0x00 || ckpt_id || u64(vaddr) || u64(first)
#              || u32(pages) || u32(compress) || name, compressed pages)

def parse_regions(index):
    """[(first, pages, stored, offset, tags)] of a pagetags image's records."""
    out, pos, first, off = [], 0, 0, 0
    index = memoryview(index)
    while pos < len(index):
        if len(index) - pos < 8:
            raise FormatError("region record %d cut short" % len(out))
        n, stored = struct.unpack_from(">II", index, pos)
        pos += 8
        if not 1 <= n <= MAX_REGION_PAGES:
            raise FormatError("region record %d: %d pages" % (len(out), n))
        if stored and not TAG_LEN < stored < n * PAGE_SIZE:
            raise FormatError("region record %d: stored length %d for %d pages" % (len(out), stored, n))
        tags = b""
        if not stored:
            if len(index) - pos < n * PAGE_TAG_LEN:
                raise FormatError("region record %d: tags cut short" % len(out))
            tags = bytes(index[pos:pos + n * PAGE_TAG_LEN])
            pos += n * PAGE_TAG_LEN
        out.append((first, n, stored, off, tags))
        first += n
        off += stored or n * PAGE_SIZE
    return out


def pages_described(tags):
    """The pages a page image's tags describe: 16-byte tags (bytes), or the
    region records of a checkpoint that compresses (parse_regions())."""
    return sum(r[1] for r in tags) if isinstance(tags, list) else len(tags) // PAGE_TAG_LEN


def page_keys(prk, name):
    name = _label(name, "name")
    return (derive(prk, b"criusec v1 pages xts\x00" + name, 64),
            derive(prk, b"criusec v1 pages tag\x00" + name, 32))


class PageCipher:
    def __init__(self, prk, name, ckpt_id=None, aead=1, compress=0):
        _need_crypto()
        self.name = _b(name).decode()
        self.xts_key, tag_key = page_keys(prk, name)
        self.gmac = AESGCM(tag_key)
        self.compress, self.ckpt_id = compress, ckpt_id
        if compress:
            self.codec = BlockCodec(compress)
            self.region = _aead(aead, derive(prk, b"criusec v1 pages region\x00" + _label(name, "name"), 32))

    def region_aad(self, vaddr, first, n):
        return (b"criusec-region-v1\x00" + self.ckpt_id + struct.pack(">QQII", vaddr, first, n, self.compress) +
                _b(self.name))

    def seal_region(self, r, vaddr, first, pages):
        """The stored bytes of a compressed region, or None when it does not shrink."""
        c = self.codec.compress(pages, len(pages) - TAG_LEN - 1)
        if c is None:
            return None
        return self.region.encrypt(r.to_bytes(11, "big") + b"\x00", c, self.region_aad(vaddr, first,
                                                                                      len(pages) // PAGE_SIZE))

    def seal_regions(self, vaddr, index, run, r=0):
        """Consecutive pages from (vaddr, index) on, as regions r, r + 1, ...:
        (the bytes of the page image, the region records)."""
        data, records = [], []
        for k0 in range(0, len(run) // PAGE_SIZE, REGION_PAGES):
            n = min(REGION_PAGES, len(run) // PAGE_SIZE - k0)
            v, pages = vaddr + k0 * PAGE_SIZE, bytes(run[k0 * PAGE_SIZE:(k0 + n) * PAGE_SIZE])
            stored = self.seal_region(r + len(records), v, index + k0, pages)
            if stored is not None:
                data.append(stored)
                records.append(struct.pack(">II", n, len(stored)))
                continue
            sealed = [self.seal(v + k * PAGE_SIZE, index + k0 + k, pages[k * PAGE_SIZE:(k + 1) * PAGE_SIZE])
                      for k in range(n)]
            data.extend(c for c, _ in sealed)
            records.append(struct.pack(">II", n, 0) + b"".join(t for _, t in sealed))
        return b"".join(data), records

    def open_region(self, r, vaddr, first, n, stored):
        """A compressed region's pages: authenticated before they are decompressed."""
        try:
            c = self.region.decrypt(r.to_bytes(11, "big") + b"\x00", bytes(stored), self.region_aad(vaddr, first, n))
        except InvalidTag:
            raise FormatError("%s: region %d (pages %d-%d, vaddr 0x%x) failed authentication"
                              % (self.name, r, first, first + n - 1, vaddr)) from None
        try:
            return self.codec.decompress(c, n * PAGE_SIZE, True)
        except FormatError as e:
            raise FormatError("%s: region %d (pages %d-%d, vaddr 0x%x): %s"
                              % (self.name, r, first, first + n - 1, vaddr, e)) from None

    @staticmethod
    def identity(vaddr, index):
        return struct.pack("<QQ", vaddr, index)

    def _xts(self, vaddr, index):
        return Cipher(algorithms.AES(self.xts_key), modes.XTS(self.identity(vaddr, index)))

    def tag(self, vaddr, index, ct):
        return self.gmac.encrypt(struct.pack("<Q", index) + bytes(4), b"", self.identity(vaddr, index) + bytes(ct))

    def seal(self, vaddr, index, page):
        """Encrypt one page: (ciphertext, tag)."""
        if len(page) != PAGE_SIZE:
            raise CriusecError("a page is %d bytes" % PAGE_SIZE)
        e = self._xts(vaddr, index).encryptor()
        ct = e.update(bytes(page)) + e.finalize()
        return ct, self.tag(vaddr, index, ct)

    def check(self, vaddr, index, ct, tag):
        if len(ct) != PAGE_SIZE or len(tag) != PAGE_TAG_LEN or \
                not hmac.compare_digest(self.tag(vaddr, index, ct), bytes(tag)):
            raise FormatError("%s: page %d (vaddr 0x%x) failed authentication" % (self.name, index, vaddr))

    def open(self, vaddr, index, ct, tag):
        """Check a page's tag, then decrypt it."""
        self.check(vaddr, index, ct, tag)
        d = self._xts(vaddr, index).decryptor()
        return d.update(bytes(ct)) + d.finalize()

    def open_run(self, vaddr, index, data, tags):
        """Consecutive pages from (vaddr, index) on: every tag is checked before any page is decrypted."""
        n = len(data) // PAGE_SIZE
        if len(data) != n * PAGE_SIZE or len(tags) != n * PAGE_TAG_LEN:
            raise CriusecError("%s: one 16-byte tag per 4096-byte page" % self.name)
        for k in range(n):
            self.check(vaddr + k * PAGE_SIZE, index + k, data[k * PAGE_SIZE:(k + 1) * PAGE_SIZE],
                       tags[k * PAGE_TAG_LEN:(k + 1) * PAGE_TAG_LEN])
        out = []
        for k in range(n):
            d = self._xts(vaddr + k * PAGE_SIZE, index + k).decryptor()
            out.append(d.update(bytes(data[k * PAGE_SIZE:(k + 1) * PAGE_SIZE])) + d.finalize())
        return b"".join(out)


# ---- private keys ----

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



# ---- files ----

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


def _check_name(name):
    """Image names are plain file names of the image directory (issue 11.2):
    a manifest must not make a reader open another path."""
    if not isinstance(name, str) or not name or "/" in name or "\x00" in name or name in (".", "..") or \
            len(name) > 255:
        raise FormatError("%s: image name %r is not a plain file name" % (MANIFEST_IMG, name))
    return name


_CONVERSIONS = {"u": "[0-9]+", "d": "-?[0-9]+", "x": "[0-9a-f]+", "s": ".+"}


def name_matches(pattern, name):
    """Whether name is a plain file name that the printf-style pattern of an
    image kind ("core-%u.img") produces (section 10.6), as the engine's
    criusec_name_matches() decides."""
    try:
        _check_name(name)
    except FormatError:
        return False
    rx, i = "", 0
    while i < len(pattern):
        c = pattern[i]
        if c != "%":
            rx += re.escape(c)
            i += 1
            continue
        if pattern[i + 1:i + 2] == "%":
            rx += "%"
            i += 2
            continue
        j = i + 1
        while pattern[j:j + 1] == "l":
            j += 1
        conv = _CONVERSIONS.get(pattern[j:j + 1])
        if conv is None:
            return False
        rx += conv
        i = j + 1
    return re.fullmatch(rx, name, re.S) is not None


def kind_pattern(kind):
    """The names images of this kind may have (page tags: pagetags-N.img;
    a plugin's own image, written through criu_image_open(): any plain name)."""
    if kind == PAGE_TAGS_KIND:
        return "pagetags-%u.img"
    if kind == PLUGIN_KIND:
        return "%s"
    return kind


# ---- the manifest (section 10.6) ----

def decode_manifest(pt, with_entries=False):
    """The plaintext of cipher-manifest.img: [(name, kind, size, digest)]
    (size and digest None when the manifest has none: format 1), and with
    with_entries a fifth item, the digest of the entries of a pagemap a
    page server wrote (None for every other image).  Every name must be a
    plain file name of its kind."""
    from .images import pb
    e = _one_entry(pt, "CIPHER_MANIFEST", pb.cipher_manifest_entry)
    if e is None:
        raise FormatError("%s: malformed" % MANIFEST_IMG)
    names, kinds, sizes, digests = list(e.images), list(e.kinds), list(e.sizes), list(e.digests)
    pms = list(e.entries) or [b""] * len(names)
    if len(names) != len(kinds) or len(pms) != len(names):
        raise FormatError("%s: malformed (%d images, %d kinds)" % (MANIFEST_IMG, len(names), len(kinds)))
    for n, k, pm in zip(names, kinds, pms):
        if not name_matches(kind_pattern(k), n):
            raise FormatError("%s: %r is not an image name of the kind %s" % (MANIFEST_IMG, n, k))
        if pm and (len(pm) != DIGEST_LEN or not k.startswith("pagemap-")):
            raise FormatError("%s: malformed entry for %s" % (MANIFEST_IMG, n))
    if not sizes and not digests:
        out = [(n, k, None, None, pm or None) for n, k, pm in zip(names, kinds, pms)]
    else:
        if len(sizes) != len(names) or len(digests) != len(names):
            raise FormatError("%s: malformed (%d images, %d sizes, %d digests)"
                              % (MANIFEST_IMG, len(names), len(sizes), len(digests)))
        out = []
        for n, k, s, d, pm in zip(names, kinds, sizes, digests, pms):
            # size 0 and no digest: an image the dump did not seal (a page server's)
            if len(d) != DIGEST_LEN and (s, d) != (0, b""):
                raise FormatError("%s: malformed digest of %s" % (MANIFEST_IMG, n))
            out.append((n, k, s, d, pm or None))
    return out if with_entries else [e[:4] for e in out]


def encode_manifest(entries):
    """cipher-manifest.img's plaintext for [(name, kind, size, digest[, entries])]."""
    from .images import pb
    e = pb.cipher_manifest_entry()
    for name, kind, size, digest, *pm in entries:
        e.images.append(name)
        e.kinds.append(kind)
        e.sizes.append(size)
        e.digests.append(digest)
        e.entries.append((pm[0] if pm else None) or b"")
    return _image_of("CIPHER_MANIFEST", e)


def pagemap_digest(pages_id, entries):
    """SHA-256 over a pagemap's entries [(vaddr, nr_pages, flags)] (section 10.6)."""
    h = hashlib.sha256(b"criusec-pagemap-v1\x00" + struct.pack(">Q", pages_id))
    for vaddr, nr, flags in entries:
        h.update(struct.pack(">QII", vaddr, nr, flags))
    return h.digest()


# ---- checkpoints ----

def read_cipher_img(path):
    """decode_cipher_img() of a file, never through a symbolic link."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise FormatError("cipher.img: a symbolic link, not the checkpoint's header") from None
        raise
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise FormatError("cipher.img: not a regular file")
        # 1024 stanzas of up to 16 KiB each, 8 certificates and a signature fit
        data = f.read(1 << 25)
    return decode_cipher_img(data)


def _hex(b):
    return bytes(b).hex()


class Checkpoint:
    """An image directory, plain or encrypted.

        ck = Checkpoint("/var/lib/ckpt", keys="key.pem", trust="signers.pem")
        core = ck.load("core-1234.img")             # like pycriu.images.load
        argv = ck.read_memory(1234, addr, 4096)     # decrypted, tag-checked

    keys: a path or a list of paths to PEM private keys; the one whose
    public key is a recipient of the checkpoint is used.  None: CRIU's
    default key, when readable.  trust, max_age: the restore policy
    (Policy; policy= gives one directly).  Nothing is read until it is
    needed, and a plain checkpoint needs no key.  The policy is applied,
    and a signature verified, before anything but cipher.img is read.
    """

    def __init__(self, imgdir, keys=None, trust=None, max_age=None, policy=None):
        self.dir = os.fspath(imgdir)
        self.keys = default_keys(keys)
        self.policy = policy if policy is not None else Policy(trust, max_age)
        # lexists: a dangling cipher.img link is no way to make images plain
        self.encrypted = os.path.lexists(os.path.join(self.dir, CIPHER_IMG))
        self.mk = None
        self.key_path = None
        self._reset()

    def _reset(self):
        self.header = None      # checked, and accepted by the policy
        self.report = None      # Policy.evaluate() of the header
        self._manifest = None   # [(kind, name)]
        self._entries = None    # name -> [kind, size, digest]
        self._kinds = None
        self._tags = {}
        self._plain = {}
        self._pagemaps = {}
        self._parent = None

    @classmethod
    def create(cls, imgdir, recipients, keys=None, aead=1, chunk_size=65536, mk=None, ckpt_id=None, policy=None,
               compress=0):
        """A new, empty encrypted checkpoint in imgdir, for recipients (RSA
        public keys or certificates).  Add images with write_image() and
        write_pages(); reseal() then writes its manifest and cipher.img."""
        os.makedirs(imgdir, exist_ok=True)
        ck = cls(imgdir, keys, policy=policy if policy is not None else Policy.permissive())
        if ck.encrypted:
            raise CriusecError("%s: already has a %s" % (ck.dir, CIPHER_IMG))
        ck.encrypted = True
        ck.mk = os.urandom(MK_LEN) if mk is None else bytes(mk)
        ck.header = new_header(ck.mk, os.urandom(ID_LEN) if ckpt_id is None else ckpt_id, recipients, aead,
                               chunk_size, compress=compress)
        ck._manifest, ck._entries, ck._kinds = [], {}, {}
        return ck

    def path(self, name):
        return os.path.join(self.dir, name)

    # -- the header, the policy and the key --

    def _read_header(self):
        h = read_cipher_img(self.path(CIPHER_IMG))
        try:
            check_header(h)
        except FormatError as e:
            raise FormatError("cipher.img: %s" % str(e).replace("cipher.img ", "")) from None
        return h

    def load_header(self):
        """Section 10.7 steps 1-2: parse cipher.img, check it, apply the
        policy and verify the signature.  Nothing secret is used."""
        if self.header is not None or not self.encrypted:
            return
        _need_crypto()
        h = self._read_header()
        self.report = self.policy.check(h)
        self.header = h

    def check_plain(self, what=None):
        """The policy's word on a checkpoint without cipher.img."""
        if not self.encrypted:
            self.policy.check_plain(what or self.dir)

    def unlock(self, for_image=None):
        """Load the header (load_header) and import it with one of the keys
        (section 3.4).  Errors name for_image, the image wanted, or else the
        directory."""
        if not self.encrypted:
            return
        self.load_header()
        if self.mk is not None:
            return
        if not self.keys:
            raise EncryptedImageError("%s: encrypted %s; pass --tls-key (no readable key at %s)"
                                      % (for_image or self.dir, "image" if for_image else "checkpoint",
                                         DEFAULT_KEY))
        fprs = {r[0] for r in self.header["recipients"]}
        tried, tokens = [], []
        for path in self.keys:
            if is_pkcs11_url(path):
                tokens.append(path)  # refused below, unless a PEM key is a recipient
                continue
            priv = load_private_key(path)
            if fingerprint(priv.public_key()) not in fprs:
                tried.append(path)
                continue
            try:
                self.mk = import_header(self.header, priv)
            except CriusecError as e:
                raise type(e)("cipher.img: %s (key %s)" % (str(e).replace("cipher.img ", ""), path)) from None
            self.key_path = path
            return
        if tokens:
            _no_pkcs11(tokens[0], "%s: private key" % (for_image or self.dir))
        raise PrivateKeyError("%s: no recipient stanza of cipher.img matches the private key %s"
                              % (for_image or self.dir, ", ".join(tried)))

    @property
    def ckpt_id(self):
        self.unlock()
        return self.header["ckpt_id"]

    @property
    def prk(self):
        self.unlock()
        return prk_of(self.mk, self.header["ckpt_id"])

    @property
    def signed(self):
        self.load_header()
        return bool(self.encrypted and self.header.get("sig_alg"))

    def describe(self):
        """The checkpoint's header and what this reader makes of it (crit
        info DIR, crit x DIR ps), as a dict.  Raises only for a malformed
        header: a refusal is reported in "refused"."""
        if not self.encrypted:
            try:
                self.policy.check_plain(self.dir)
                refused = None
            except PolicyError as e:
                refused = str(e)
            return {"encrypted": False, "refused": refused}
        _need_crypto()
        # What was checked already is shown as it was checked.
        h = self.header if self.header is not None else self._read_header()
        r = self.report if self.report is not None else self.policy.evaluate(h)
        mac = "not checked (no private key of a recipient)"
        mine = {}
        if r["refusal"] is not None:
            mac = "not checked (refused)"  # no secret is used for a refused checkpoint
        elif self.mk is not None:
            mac = "verified"
            if self.key_path:
                mine[fingerprint(load_private_key(self.key_path).public_key())] = self.key_path
        else:
            for path in self.keys:
                try:
                    priv = load_private_key(path)
                except PrivateKeyError:
                    continue
                fpr = fingerprint(priv.public_key())
                if any(fpr == s[0] for s in h["recipients"]):
                    mine[fpr] = path
                    try:
                        import_header(h, priv)
                        mac = "verified"
                    except CriusecError as e:
                        mac = "failed (%s)" % e
                    break
        return {
            "encrypted": True, "format": h["version"], "ckpt_id": _hex(h["ckpt_id"]),
            "aead": AEAD_NAMES[h["aead"]], "chunk_size": h["chunk_size"],
            "compress": COMPRESS_NAMES.get(h.get("compress") or 0),
            "created": h.get("created"), "created_utc": _utc(h["created"]) if h.get("created") is not None else None,
            "recipients": [{"fingerprint": "SHA256:" + _hex(f), "key": mine.get(f)} for f, _, _ in h["recipients"]],
            "parent_id": _hex(h["parent_id"]) if h["has_parent"] else None,
            "signature": r["signature"], "sig_alg": r["alg"], "signer": r["signer"], "chain": r["chain"],
            "trusted": r["trusted"], "trust": r["trust"], "mac": mac,
            "refused": str(r["refusal"]) if r["refusal"] is not None else None,
        }

    def summary(self):
        """describe() as lines of text, for people."""
        d = self.describe()
        if not d["encrypted"]:
            return ["checkpoint  plain (no cipher.img)" + ("; refused: " + d["refused"] if d["refused"] else "")]
        out = ["checkpoint  %s (criusec format %d, %s)" % (d["ckpt_id"], d["format"], d["aead"])]
        if d["created"] is not None:
            out.append("created     %s" % d["created_utc"])
        for r in d["recipients"]:
            out.append("recipient   %s%s" % (r["fingerprint"], " (key %s)" % r["key"] if r["key"] else ""))
        out.append("parent      %s" % (d["parent_id"] or "none"))
        if d["signer"]:
            out.append("signer      %s (%s)" % (d["signer"], d["sig_alg"]))
            out += ["  issued by %s" % s for s in d["chain"][1:]]
        out.append("signature   %s" % d["signature"])
        if d["trusted"]:
            out.append("trusted     yes (%s)" % d["trusted"])
        elif d["trust"] == "no trust configured":
            out.append("trusted     not checked: no trust configured (--trust PEM)")
        elif d["signature"] == "verified":
            out.append("trusted     no: %s" % d["trust"])
        out.append("header MAC  %s" % d["mac"])
        if d["refused"]:
            out.append("refused     %s" % d["refused"])
        return out

    # -- the manifest --

    def manifest(self):
        """[(kind, name)] of every stream image the dump wrote.  In format 2
        the manifest's digest must be the header's (section 10.6)."""
        if self._manifest is None:
            self.unlock(MANIFEST_IMG)
            pt = self._open_stream_file(MANIFEST_KIND, MANIFEST_IMG)
            if self.header["version"] >= 2 and \
                    not hmac.compare_digest(hashlib.sha256(pt).digest(), self.header["manifest_digest"]):
                raise FormatError("%s: not the manifest this checkpoint was sealed with (its digest is not "
                                  "the one in cipher.img)" % MANIFEST_IMG)
            entries = {}
            for name, kind, size, digest, pm in decode_manifest(pt, with_entries=True):
                if name in entries or name in (CIPHER_IMG, MANIFEST_IMG) or PAGES_RE.match(name):
                    raise FormatError("%s: lists %s twice, or an image it must not list" % (MANIFEST_IMG, name))
                _label(kind, "kind")
                if self.header["version"] >= 2 and size is None:
                    raise FormatError("%s: format 2 without image sizes and digests" % MANIFEST_IMG)
                entries[name] = [kind, size, digest, pm]
            self._entries = entries
            self._manifest = [(e[0], n) for n, e in entries.items()]
            self._kinds = {n: e[0] for n, e in entries.items()}
        return self._manifest

    def kind_of(self, name):
        if name == MANIFEST_IMG:
            return MANIFEST_KIND
        self.manifest()
        if name not in self._kinds:
            raise FormatError("%s: not an image of this checkpoint (not in its %s)" % (name, MANIFEST_IMG))
        return self._kinds[name]

    # -- streams --

    def _open_file(self, name):
        """An image file, never through a symbolic link, and only a regular
        file (a FIFO would block): (file, size)."""
        try:
            fd = os.open(self.path(name), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise FormatError("%s: a symbolic link, not an image file" % name) from None
            raise
        f = os.fdopen(fd, "rb")
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            f.close()
            raise FormatError("%s: not a regular file" % name)
        return f, st.st_size

    def _open_stream_file(self, kind, name):
        entry = self._entries.get(name) if self._entries is not None else None
        try:
            f, size = self._open_file(name)
        except FileNotFoundError:
            raise FormatError("%s: missing from the encrypted checkpoint (its manifest lists it)" % name) \
                if name != MANIFEST_IMG else \
                FormatError("%s is missing: the dump did not finish, or images were removed" % name) from None
        with f:
            # A file of another size than recorded is refused unread.
            if entry is not None and entry[1] and size != entry[1]:
                raise FormatError("%s: %d bytes, but the manifest records %d (truncated, extended or replaced)"
                                  % (name, size, entry[1]))
            data = f.read()
        pt = self.open_stream(name, data, kind)
        if entry is not None and entry[2] and not hmac.compare_digest(hashlib.sha256(pt).digest(), entry[2]):
            raise FormatError("%s: its plaintext is not the one the manifest records (digest mismatch)" % name)
        return pt

    def open_stream(self, name, data, kind=None):
        """Authenticate and decrypt the bytes of the stream image `name`."""
        self.unlock(name)
        h = self.header
        if kind is None:
            kind = self.kind_of(name)
        try:
            return stream_open(self.mk, h["ckpt_id"], h["aead"], h["chunk_size"], kind, name, data,
                               h.get("compress") or 0)
        except FormatError as e:
            raise FormatError("%s: %s" % (name, e)) from None

    def seal(self, name, plaintext):
        """Encrypt plaintext as the image `name` of this checkpoint (a fresh
        stream salt).  write_image() also records it in the manifest."""
        self.unlock(name)
        h = self.header
        return stream_seal(self.mk, h["ckpt_id"], h["aead"], h["chunk_size"], self.kind_of(name), name, plaintext,
                           compress=h.get("compress") or 0)

    # -- images --

    def read(self, name):
        """The plaintext of image `name`, checked as criu checks it.

        FileNotFoundError for an image this checkpoint does not have."""
        if self.encrypted and name not in PLAIN_BY_DESIGN:
            m = PAGES_RE.match(name)
            if m:
                return self.pages_image(int(m.group(1)))
            self.unlock(name)
            if name not in self._manifest_names():
                if not os.path.lexists(self.path(name)):
                    raise FileNotFoundError(2, "No such file or directory", self.path(name))
                self.kind_of(name)  # raises: not in the manifest
            if name not in self._plain:
                self._plain[name] = self._open_stream_file(self.kind_of(name), name)
            return self._plain[name]
        if self.encrypted:
            self.load_header()  # the policy covers the plain files of an encrypted checkpoint too
        else:
            self.check_plain(name)
        with open(self.path(name), "rb") as f:
            data = f.read()
        if is_stream(data) and not self.encrypted:
            raise FormatError("%s is encrypted, but there is no %s beside it" % (name, CIPHER_IMG))
        return data

    def _manifest_names(self):
        self.manifest()
        return set(self._kinds) | {MANIFEST_IMG}

    def open(self, name):
        """read(name) as a binary file object."""
        f = io.BytesIO(self.read(name))
        f.name = self.path(name)
        return f

    def load(self, name, pretty=False, no_payload=False):
        """Like pycriu.images.load() on the image `name`."""
        from . import images
        return images.load(self.open(name), pretty, no_payload)

    def dumps(self, img, name):
        """Like pycriu.images.dumps(), encrypted for the image `name` when the checkpoint is."""
        from . import images
        data = images.dumps(img)
        if self.encrypted and name not in PLAIN_BY_DESIGN:
            return self.seal(name, data)
        return data

    def write(self, name, data):
        """Replace the file `name` by data as it is (already sealed),
        atomically, owner-only.  See write_image() to keep an encrypted
        checkpoint consistent."""
        replace_file(self.path(_check_name(name)), data)

    def verify(self):
        """Authenticate every image the manifest lists, as criu restore does
        before it uses any; the number of images.  (Their plaintexts are
        kept for read().)"""
        if not self.encrypted:
            self.check_plain(self.dir)
            return 0
        n = self._verify_images()
        self._check_pagemaps()
        return n

    def _verify_images(self):
        """verify() but for the pagemaps' coverage: what an edit in progress
        (write_image, write_pages) relies on, before reseal() makes the
        checkpoint whole again."""
        self.unlock()
        for kind, name in self.manifest():
            if name not in self._plain:
                self._plain[name] = self._open_stream_file(kind, name)
        return len(self._manifest)

    def _check_pagemaps(self):
        """Every pagemap covers exactly the pages its page image has tags for,
        and one a page server wrote holds exactly the entries the dump sent
        it (section 10.6), as criu restore checks."""
        for kind, name in self._manifest:
            if not kind.startswith("pagemap-"):
                continue
            pages_id, entries = self.pagemap(name)
            recorded = self._entries[name][3]
            if recorded is not None and not hmac.compare_digest(pagemap_digest(pages_id, entries), recorded):
                raise FormatError("%s: its entries are not the ones the dump sent the page server" % name)
            present = sum(nr for _, nr, flags in entries if flags & PE_PRESENT and not flags & PE_PARENT)
            tname = "pagetags-%d.img" % pages_id
            if tname not in self._entries:
                if present:
                    raise FormatError("%s: its %d pages have no tags (%s)" % (name, present, tname))
                continue
            index = self.read(tname)
            ntags = pages_described(parse_regions(index) if self.header.get("compress") else index)
            if ntags != present:
                raise FormatError("%s: covers %d pages, but %s holds %d tags" % (name, present, tname, ntags))

    # -- editing, and sealing again --

    def _record(self, name, kind, size, digest):
        if name not in self._entries:
            self._manifest.append((kind, name))
        self._entries[name] = [kind, size, digest, None]
        self._kinds[name] = kind

    def write_image(self, name, plaintext, kind=None):
        """Replace the image `name` by plaintext (or add it, given its kind):
        sealed under a fresh stream key and recorded in the manifest with
        its size and digest.  reseal() must follow the last change, or the
        checkpoint no longer opens."""
        _check_name(name)
        plaintext = bytes(plaintext)
        self._pagemaps.pop(name, None)
        if not self.encrypted or name in PLAIN_BY_DESIGN:
            self.write(name, plaintext)
            return
        if PAGES_RE.match(name):
            raise CriusecError("%s: pages are written with write_pages()" % name)
        self._verify_images()
        e = self._entries.get(name)
        if e is not None and kind is not None and kind != e[0]:
            raise CriusecError("%s: its kind is %s, not %s" % (name, e[0], kind))
        if e is None and kind is None:
            raise CriusecError("%s: not an image of this checkpoint; give its kind to add it" % name)
        kind = e[0] if e is not None else kind
        h = self.header
        sealed = stream_seal(self.mk, h["ckpt_id"], h["aead"], h["chunk_size"], kind, name, plaintext,
                             compress=h.get("compress") or 0)
        self.write(name, sealed)
        self._record(name, kind, len(sealed), hashlib.sha256(plaintext).digest())
        self._plain[name] = plaintext
        self._tags.clear()

    def remove_image(self, name):
        """Remove an image and its manifest entry (reseal() follows)."""
        if self.encrypted and name not in PLAIN_BY_DESIGN:
            self._verify_images()
            self._entries.pop(name, None)
            self._manifest = [(k, n) for k, n in self._manifest if n != name]
            self._kinds.pop(name, None)
            self._plain.pop(name, None)
        try:
            os.unlink(self.path(_check_name(name)))
        except FileNotFoundError:
            pass

    def write_pages(self, pagemap, entries, pages, kind=None, magic_name=None):
        """Rewrite the pagemap image `pagemap` as entries [(vaddr, nr_pages,
        flags)] and the pages of its present entries (not PE_PARENT) from
        pages ({vaddr: 4096 bytes}), in a page image of a new id (so that no
        page key and position ever encrypts two contents), with its tags.
        The old page image is removed.  reseal() follows."""
        from . import images
        old = self.pagemap(pagemap)[0] if os.path.lexists(self.path(pagemap)) else None
        if magic_name is None:
            magic_name = self.load(pagemap)["magic"] if old is not None else "PAGEMAP"
        ids = [int(m.group(1)) for m in map(PAGES_RE.match, os.listdir(self.dir)) if m]
        pid = old if old is not None and not self.encrypted else max(ids + [old or 0, 0]) + 1
        name = "pages-%d.img" % pid
        pc = self._page_cipher(name) if self.encrypted else None
        data, tags, index = [], [], 0
        for vaddr, nr, flags in entries:
            if not flags & PE_PRESENT or flags & PE_PARENT:
                continue
            if pc is not None and pc.compress:
                # Regions of up to REGION_PAGES, compressed when they shrink (section 11.3).
                run = b"".join(bytes(pages[vaddr + k * PAGE_SIZE]) for k in range(nr))
                stored, records = pc.seal_regions(vaddr, index, run, len(tags))
                data.append(stored)
                tags.extend(records)
                index += nr
                continue
            for k in range(nr):
                page = bytes(pages[vaddr + k * PAGE_SIZE])
                if pc is None:
                    data.append(page)
                else:
                    ct, tag = pc.seal(vaddr + k * PAGE_SIZE, index, page)
                    data.append(ct)
                    tags.append(tag)
                index += 1
        self.write(name, b"".join(data))
        if self.encrypted:
            self.write_image("pagetags-%d.img" % pid, b"".join(tags), PAGE_TAGS_KIND)
            if old is not None and old != pid:
                self.remove_image("pagetags-%d.img" % old)
        if old is not None and old != pid:
            self.remove_image("pages-%d.img" % old)
        img = {"magic": magic_name, "entries": [{"pages_id": pid}] + [
            {"vaddr": v, "compat_nr_pages": 0, "nr_pages": n, "flags": f} for v, n, f in entries]}
        self.write_image(pagemap, images.dumps(img), kind)
        self._pagemaps.pop(pagemap, None)
        self._tags.clear()

    def reseal(self, signer=None, created=None, parent=None, recipients=None):
        """Seal the checkpoint again, in format 2, after edits (or to turn a
        format-1 checkpoint into format 2): every image is verified, the
        manifest written with every image's size and digest, and a new
        header made: signed by signer (a Signer) or unsigned, created at
        `created` (default now), for the same recipients (or new ones: RSA
        public keys or certificates), with the same parent (parent=: a
        parent Checkpoint, (parent_id, binding), or False for none).

        An edited checkpoint is no longer what its original signer signed:
        unless signer is given, the new header is unsigned, which a trust
        policy refuses.  Returns the new header."""
        if not self.encrypted:
            raise CriusecError("%s: not an encrypted checkpoint" % self.dir)
        self.verify()
        h = self.header
        for name, e in self._entries.items():
            if e[1] is None:  # from a format-1 manifest
                e[1] = os.lstat(self.path(name)).st_size
                e[2] = hashlib.sha256(self._plain[name]).digest()
        mpt = encode_manifest([(n, *e) for n, e in self._entries.items()])
        self.write(MANIFEST_IMG, stream_seal(self.mk, h["ckpt_id"], h["aead"], h["chunk_size"], MANIFEST_KIND,
                                             MANIFEST_IMG, mpt, compress=h.get("compress") or 0))
        nh = new_header(self.mk, h["ckpt_id"], h["recipients"] if recipients is None else recipients, h["aead"],
                        h["chunk_size"], created, manifest_digest=hashlib.sha256(mpt).digest(),
                        compress=h.get("compress") or 0)
        if parent is not None:
            _set_parent(nh, parent)
        elif h["has_parent"]:
            if h.get("parent_binding") is None:
                raise CriusecError("%s: a format-1 child has no parent binding: give its parent (parent=) to "
                                   "bind it" % self.dir)
            _set_parent(nh, (h["parent_id"], h["parent_binding"]))
        seal_header(nh, self.mk, signer)
        self.write(CIPHER_IMG, encode_cipher_img(nh))
        # Read back as any reader would (the policy included); the key stays.
        self._reset()
        return nh

    # -- pages --

    def parent(self):
        """The pre-dump parent (the "parent" link), checked to be the
        checkpoint this one was dumped against (section 10.5) before any of
        its images is read.  An encrypted parent is opened only for a
        format-2 child whose header is authenticated (and accepted by the
        policy), never for a plain or format-1 one."""
        if self._parent is None:
            pdir = self.path("parent")
            if not os.path.isdir(pdir):
                raise CriusecError("%s: pages are in the parent checkpoint, which is missing" % self.dir)
            p = Checkpoint(pdir, self.keys, policy=self.policy)
            if not self.encrypted:
                self.check_plain(self.dir)
                if p.encrypted:
                    raise FormatError("%s: an encrypted parent is never opened for a plain checkpoint (%s has no "
                                      "%s)" % (pdir, self.dir, CIPHER_IMG))
            else:
                self.unlock()
                h = self.header
                if not h["has_parent"] or not p.encrypted:
                    raise FormatError("%s: the parent images are not the checkpoint these images were dumped "
                                      "against" % pdir)
                if h["version"] < 2:
                    raise FormatError("%s: not opened for a format-1 checkpoint, which has no parent binding "
                                      "(section 10.5)" % pdir)
                try:
                    p.unlock()
                except CriusecError as e:
                    raise type(e)("%s: %s" % (pdir, e)) from None
                if p.header["ckpt_id"] != h["parent_id"]:
                    raise FormatError("%s: the parent images are not the checkpoint these images were dumped "
                                      "against" % pdir)
                if not hmac.compare_digest(parent_binding(p.prk, h["parent_id"], h["ckpt_id"]),
                                           h["parent_binding"]):
                    raise FormatError("%s: the parent binding does not verify (a parent forged with its id, or "
                                      "a child not made from this parent)" % pdir)
            self._parent = p
        return self._parent

    def pagemap(self, name):
        """(pages_id, [(vaddr, nr_pages, flags)]) of a pagemap image, with old-format entries normalised."""
        if name not in self._pagemaps:
            from . import images
            img = images.load(self.open(name))
            head, entries = img["entries"][0], []
            for e in img["entries"][1:]:
                flags = e.get("flags")
                if e.get("in_parent"):
                    flags = (flags or 0) | PE_PARENT
                elif flags is None:
                    flags = PE_PRESENT
                nr = e.get("nr_pages", e.get("compat_nr_pages"))
                entries.append((int(e["vaddr"]), int(nr), int(flags)))
            self._pagemaps[name] = (int(head["pages_id"]), entries)
        return self._pagemaps[name]

    def _pagemap_of_pages(self, pages_id):
        for name in sorted(os.listdir(self.dir)):
            if name.startswith("pagemap-") and name.endswith(".img"):
                if self.pagemap(name)[0] == pages_id:
                    return name
        raise CriusecError("pages-%d.img: no pagemap image refers to it" % pages_id)

    def _page_cipher(self, name):
        h = self.header
        return PageCipher(self.prk, name, h["ckpt_id"], h["aead"], h.get("compress") or 0)

    def _page_tags(self, pages_id, size):
        """The tags of pages-<id>.img (a bytes string), or in a checkpoint
        that compresses its region records, checked against the file's size."""
        if pages_id not in self._tags:
            tname = "pagetags-%d.img" % pages_id
            self.manifest()
            if self._kinds.get(tname) != PAGE_TAGS_KIND:
                raise FormatError("pages-%d.img: its page tags (%s) are not in the checkpoint" % (pages_id, tname))
            tags = self._plain.get(tname) or self._open_stream_file(PAGE_TAGS_KIND, tname)
            if self.header.get("compress"):
                try:
                    tags = parse_regions(tags)
                except FormatError as e:
                    raise FormatError("%s: %s" % (tname, e)) from None
                want = tags[-1][3] + (tags[-1][2] or tags[-1][1] * PAGE_SIZE) if tags else 0
            else:
                want = len(tags) // PAGE_TAG_LEN * PAGE_SIZE
                if len(tags) % PAGE_TAG_LEN:
                    raise FormatError("%s: not whole tags" % tname)
            if size != want:
                raise FormatError("pages-%d.img: %d bytes, but the dump wrote %d: truncated or extended"
                                  % (pages_id, size, want))
            self._tags[pages_id] = tags
        return self._tags[pages_id]

    def _read_pages(self, pages_id, index, vaddr, n):
        """n consecutive pages of pages-<id>.img from page `index`, whose first is at vaddr."""
        name = "pages-%d.img" % pages_id
        if self.encrypted:
            self.unlock(name)
        else:
            self.check_plain(name)
        try:
            f, size = self._open_file(name)
        except FileNotFoundError:
            raise FormatError("%s: missing from the checkpoint (a pagemap refers to it)" % name) from None
        with f:
            if not self.encrypted:
                f.seek(index * PAGE_SIZE)
                data = f.read(n * PAGE_SIZE)
                if len(data) != n * PAGE_SIZE or size % PAGE_SIZE:
                    raise FormatError("%s: truncated (%d bytes, page %d wanted)" % (name, size, index + n - 1))
                return data
            tags = self._page_tags(pages_id, size)
            pc = self._page_cipher(name)
            if not pc.compress:
                if index + n > len(tags) // PAGE_TAG_LEN:
                    raise FormatError("%s: page %d is not in the checkpoint" % (name, index + n - 1))
                f.seek(index * PAGE_SIZE)
                data = f.read(n * PAGE_SIZE)
                return pc.open_run(vaddr, index, data, tags[index * PAGE_TAG_LEN:(index + n) * PAGE_TAG_LEN])
            out = []
            for r, (first, nr, stored, off, rtags) in enumerate(tags):
                lo, hi = max(index, first), min(index + n, first + nr)
                if lo >= hi:
                    continue
                rv = vaddr + (first - index) * PAGE_SIZE  # the region's address, from the caller's
                if stored:
                    f.seek(off)
                    run = pc.open_region(r, rv, first, nr, f.read(stored))[(lo - first) * PAGE_SIZE:
                                                                         (hi - first) * PAGE_SIZE]
                else:
                    f.seek(off + (lo - first) * PAGE_SIZE)
                    run = pc.open_run(rv + (lo - first) * PAGE_SIZE, lo, f.read((hi - lo) * PAGE_SIZE),
                                      rtags[(lo - first) * PAGE_TAG_LEN:(hi - first) * PAGE_TAG_LEN])
                out.append(run)
            data = b"".join(out)
            if len(data) != n * PAGE_SIZE:
                raise FormatError("%s: page %d is not in the checkpoint" % (name, index + n - 1))
            return data

    def pages_image(self, pages_id):
        """The whole plaintext of pages-<id>.img, in file order (page number
        order, in a checkpoint that compresses)."""
        if not self.encrypted:
            self.check_plain("pages-%d.img" % pages_id)
            with open(self.path("pages-%d.img" % pages_id), "rb") as f:
                return f.read()
        pm = self._pagemap_of_pages(pages_id)
        out, index = [], 0
        for vaddr, nr, flags in self.pagemap(pm)[1]:
            if flags & PE_PRESENT and not flags & PE_PARENT:
                out.append(self._read_pages(pages_id, index, vaddr, nr))
                index += nr
        data = b"".join(out)
        tags = self._page_tags(pages_id, os.path.getsize(self.path("pages-%d.img" % pages_id)))
        dumped = pages_described(tags)
        if len(data) != dumped * PAGE_SIZE:
            raise FormatError("pages-%d.img: %d pages, its pagemap %s describes %d"
                              % (pages_id, dumped, pm, len(data) // PAGE_SIZE))
        return data

    def pages(self, pagemap, start=0, end=1 << 64):
        """Yield (vaddr, page) for every page the pagemap image `pagemap`
        (e.g. "pagemap-1234.img", "pagemap-shmem-5.img") has in [start, end),
        in address order, decrypted and tag-checked, from the parent
        checkpoints for pages that are there."""
        pages_id, entries = self.pagemap(pagemap)
        index = 0
        for vaddr, nr, flags in entries:
            present = flags & PE_PRESENT and not flags & PE_PARENT
            lo, hi = max(vaddr, start), min(vaddr + nr * PAGE_SIZE, end)
            if lo < hi:
                lo -= (lo - vaddr) % PAGE_SIZE
                if present:
                    first = (lo - vaddr) // PAGE_SIZE
                    n = -(-(hi - lo) // PAGE_SIZE)
                    data = self._read_pages(pages_id, index + first, lo, n)
                    for k in range(n):
                        yield lo + k * PAGE_SIZE, data[k * PAGE_SIZE:(k + 1) * PAGE_SIZE]
                elif flags & PE_PARENT:
                    yield from self.parent().pages(pagemap, lo, hi)
            if present:
                index += nr

    def read_memory(self, pid, addr, length, pagemap=None):
        """length bytes of task `pid`'s memory at addr, as dumped.

        Raises CriusecError when a page of the range is not in the
        checkpoint (never touched, or a clean file-backed page)."""
        pagemap = pagemap or "pagemap-%d.img" % pid
        end = addr + length
        got = dict(self.pages(pagemap, addr - addr % PAGE_SIZE, end))
        out = []
        p = addr - addr % PAGE_SIZE
        while p < end:
            if p not in got:
                raise CriusecError("%s: page 0x%x is not in the checkpoint" % (pagemap, p))
            out.append(got[p])
            p += PAGE_SIZE
        off = addr % PAGE_SIZE
        return b"".join(out)[off:off + length]
