# SPDX-License-Identifier: LGPL-2.1-only
"""Block compression of streams and page regions (section 11): LZ4 blocks or
zstd frames, bounded on both sides (engine: compress.cpp).
"""
import struct

from .common import COMPRESS_NAMES, CriusecError, FormatError, STORED_FLAG, STREAM_BLOCK


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
