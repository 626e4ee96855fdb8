# SPDX-License-Identifier: LGPL-2.1-only
"""Stream images (section 4): chunked AEAD of one image's plaintext, bound to
the checkpoint, the image's kind and name (engine: stream.cpp).
"""
import os

from .common import (
    AEAD_NAMES, AESGCM, COMPRESS_NAMES, ChaCha20Poly1305, CriusecError, FormatError, InvalidTag, MAGIC,
    MAX_COUNTER, STREAM_HEADER_LEN, TAG_LEN, _b, _label, _need_crypto)
from .kdf import derive, prk_of
from .header import valid_chunk_size
from .compress import blocks_decode, blocks_encode


def stream_key(prk, kind, name, salt):
    return derive(prk, b"criusec v1 stream\x00" + _b(kind) + b"\x00" + _b(name) + b"\x00" + salt, 32)


def nonce(counter, last):
    return counter.to_bytes(11, "big") + (b"\x01" if last else b"\x00")


def _aead(aead, key):
    _need_crypto()
    return (AESGCM if aead == 1 else ChaCha20Poly1305)(key)


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
