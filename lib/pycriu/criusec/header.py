# SPDX-License-Identifier: LGPL-2.1-only
"""cipher.img, the checkpoint's header (sections 3 and 10): its canonical
bytes, MAC, structure checks, recipient stanzas, parent binding, and its
protobuf encoding (engine: ctx.cpp).
"""
import errno
import hashlib
import hmac
import os
import stat
import struct

from .common import (
    AEAD_NAMES, COMPRESS_NAMES, CriusecError, DIGEST_LEN, FPR_LEN, FormatError, ID_LEN, MAC_LEN, MAX_CERT_LEN,
    MAX_SIGNER_CERTS, MAX_SIG_LEN, PolicyError, SIG_ALGS, V2_FIELDS, _need_crypto, _now, padding, rsa, x509)
from .kdf import derive, prk_of
from .keys import _unwrap, fingerprint
from .sign import _ext, _validity_problem, cert_subject


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
    from ..images import magic
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
    from ..images import magic
    body = message.SerializeToString()
    return struct.pack("<iiI", magic.by_name["IMG_COMMON"], magic.by_name[magic_name], len(body)) + body


def decode_cipher_img(data):
    """cipher.img (a plain CRIU image of one cipher_entry) as a header dict."""
    from ..images import pb
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
    from ..images import pb
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
