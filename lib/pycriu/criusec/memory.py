# SPDX-License-Identifier: LGPL-2.1-only
"""A checkpoint's memory: its pagemaps and the pages of its page images,
decrypted and tag-checked, from the parent checkpoint where the pagemap
says so.  Read through Checkpoint (pagemap, pages, pages_image,
read_memory); this module holds the reading, Checkpoint the header, the
key and the manifest it relies on.
"""
import os

from .common import CriusecError, FormatError, PAGE_SIZE, PAGE_TAGS_KIND, PAGE_TAG_LEN, PE_PARENT, PE_PRESENT
from .pages import PageCipher, pages_described, parse_regions


class PageReader:
    """The page images of one Checkpoint, with what was read of them: the
    normalised pagemaps and the page tags, per pages id."""

    def __init__(self, ck):
        self.ck = ck
        self._tags = {}
        self._pagemaps = {}

    # An edit (edit.Editor) drops what it changed.

    def forget_pagemap(self, name):
        self._pagemaps.pop(name, None)

    def forget_tags(self):
        self._tags.clear()

    def pagemap(self, name):
        """(pages_id, [(vaddr, nr_pages, flags)]) of a pagemap image, with old-format entries normalised."""
        ck = self.ck
        if name not in self._pagemaps:
            from .. import images
            img = images.load(ck.open(name))
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
        ck = self.ck
        for name in sorted(os.listdir(ck.dir)):
            if name.startswith("pagemap-") and name.endswith(".img"):
                if self.pagemap(name)[0] == pages_id:
                    return name
        raise CriusecError("pages-%d.img: no pagemap image refers to it" % pages_id)

    def page_cipher(self, name):
        """The page cipher of the page image `name` (its key from the checkpoint's)."""
        ck = self.ck
        h = ck.header
        return PageCipher(ck.prk, name, h["ckpt_id"], h["aead"], h.get("compress") or 0)

    def _page_tags(self, pages_id, size):
        """The tags of pages-<id>.img (a bytes string), or in a checkpoint
        that compresses its region records, checked against the file's size."""
        ck = self.ck
        if pages_id not in self._tags:
            tname = "pagetags-%d.img" % pages_id
            ck.manifest()
            if ck._kinds.get(tname) != PAGE_TAGS_KIND:
                raise FormatError("pages-%d.img: its page tags (%s) are not in the checkpoint" % (pages_id, tname))
            tags = ck._plain.get(tname) or ck._open_stream_file(PAGE_TAGS_KIND, tname)
            if ck.header.get("compress"):
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
        ck = self.ck
        name = "pages-%d.img" % pages_id
        if ck.encrypted:
            ck.unlock(name)
        else:
            ck.check_plain(name)
        try:
            f, size = ck._open_file(name)
        except FileNotFoundError:
            raise FormatError("%s: missing from the checkpoint (a pagemap refers to it)" % name) from None
        with f:
            if not ck.encrypted:
                f.seek(index * PAGE_SIZE)
                data = f.read(n * PAGE_SIZE)
                if len(data) != n * PAGE_SIZE or size % PAGE_SIZE:
                    raise FormatError("%s: truncated (%d bytes, page %d wanted)" % (name, size, index + n - 1))
                return data
            tags = self._page_tags(pages_id, size)
            pc = self.page_cipher(name)
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
        ck = self.ck
        if not ck.encrypted:
            ck.check_plain("pages-%d.img" % pages_id)
            with open(ck.path("pages-%d.img" % pages_id), "rb") as f:
                return f.read()
        pm = self._pagemap_of_pages(pages_id)
        out, index = [], 0
        for vaddr, nr, flags in self.pagemap(pm)[1]:
            if flags & PE_PRESENT and not flags & PE_PARENT:
                out.append(self._read_pages(pages_id, index, vaddr, nr))
                index += nr
        data = b"".join(out)
        tags = self._page_tags(pages_id, os.path.getsize(ck.path("pages-%d.img" % pages_id)))
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
        ck = self.ck
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
                    yield from ck.parent().pages(pagemap, lo, hi)
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
