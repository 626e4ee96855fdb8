# SPDX-License-Identifier: LGPL-2.1-only
"""Memory pages (sections 5 and 11.3): the page cipher (XTS plus a tag per
page), and compressed regions with their records (engine: page_cipher.cpp, page_index.cpp).

Every 4096-byte page of pages-<N>.img is encrypted on its own, in place:
  xts_key = derive("criusec v1 pages xts" || 0x00 || name, 64)
  tag_key = derive("criusec v1 pages tag" || 0x00 || name, 32)
  ciphertext = AES-256-XTS(xts_key, tweak = LE64(v) || LE64(i), page)
  tag = AES-256-GCM(tag_key, nonce = LE64(i) || 0^4, no plaintext,
                    AAD = LE64(v) || LE64(i) || ciphertext)
v is the page's virtual address (for shmem, its offset in the segment),
i its number in the image (file offset / 4096), name the image's file
name.  The tags, 16 bytes per page in order, are the plaintext of the
stream image pagetags-<N>.img (kind "pagetags").
"""
import hmac
import struct

from .common import (
    AESGCM, Cipher, CriusecError, FormatError, InvalidTag, MAX_REGION_PAGES, PAGE_SIZE, PAGE_TAG_LEN,
    REGION_PAGES, TAG_LEN, _b, _label, _need_crypto, algorithms, modes)
from .kdf import derive
from .compress import BlockCodec
from .stream import _aead


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
