# SPDX-License-Identifier: LGPL-2.1-only
"""Editing a checkpoint and sealing it again: images replaced, added or
removed, pages rewritten in a page image of a new id, then a new manifest
and header (reseal).  Used through Checkpoint (write_image, remove_image,
write_pages, reseal).
"""
import hashlib
import os

from .common import CIPHER_IMG, CriusecError, MANIFEST_IMG, MANIFEST_KIND, PAGES_RE, PAGE_SIZE, PAGE_TAGS_KIND, \
    PE_PARENT, PE_PRESENT, PLAIN_BY_DESIGN
from .header import _set_parent, encode_cipher_img, new_header, seal_header
from .manifest import _check_name, encode_manifest, kind_pattern, name_matches
from .stream import stream_seal


class Editor:
    """The writing side of one Checkpoint: every change is sealed at once
    and recorded in the checkpoint's manifest; reseal() makes it whole."""

    def __init__(self, ck):
        self.ck = ck

    def _record(self, name, kind, size, digest):
        ck = self.ck
        if name not in ck._entries:
            ck._manifest.append((kind, name))
        ck._entries[name] = [kind, size, digest, None]
        ck._kinds[name] = kind

    def write_image(self, name, plaintext, kind=None):
        """Replace the image `name` by plaintext (or add it, given its kind):
        sealed under a fresh stream key and recorded in the manifest with
        its size and digest.  reseal() must follow the last change, or the
        checkpoint no longer opens."""
        ck = self.ck
        _check_name(name)
        plaintext = bytes(plaintext)
        ck._memory.forget_pagemap(name)
        if not ck.encrypted or name in PLAIN_BY_DESIGN:
            ck.write(name, plaintext)
            return
        if PAGES_RE.match(name):
            raise CriusecError("%s: pages are written with write_pages()" % name)
        ck._verify_images()
        e = ck._entries.get(name)
        if e is not None and kind is not None and kind != e[0]:
            raise CriusecError("%s: its kind is %s, not %s" % (name, e[0], kind))
        if e is None and kind is None:
            raise CriusecError("%s: not an image of this checkpoint; give its kind to add it" % name)
        if e is None and (kind_pattern(kind) is None or not name_matches(kind_pattern(kind), name)):
            # what criu and Checkpoint.manifest() would refuse once sealed
            raise CriusecError("%s is not an image name of the kind %s" % (name, kind))
        kind = e[0] if e is not None else kind
        h = ck.header
        sealed = stream_seal(ck.mk, h["ckpt_id"], h["aead"], h["chunk_size"], kind, name, plaintext,
                             compress=h.get("compress") or 0)
        ck.write(name, sealed)
        self._record(name, kind, len(sealed), hashlib.sha256(plaintext).digest())
        ck._plain[name] = plaintext
        ck._memory.forget_tags()

    def remove_image(self, name):
        """Remove an image and its manifest entry (reseal() follows)."""
        ck = self.ck
        if ck.encrypted and name not in PLAIN_BY_DESIGN:
            ck._verify_images()
            ck._entries.pop(name, None)
            ck._manifest = [(k, n) for k, n in ck._manifest if n != name]
            ck._kinds.pop(name, None)
            ck._plain.pop(name, None)
        try:
            os.unlink(ck.path(_check_name(name)))
        except FileNotFoundError:
            pass

    def write_pages(self, pagemap, entries, pages, kind=None, magic_name=None):
        """Rewrite the pagemap image `pagemap` as entries [(vaddr, nr_pages,
        flags)] and the pages of its present entries (not PE_PARENT) from
        pages ({vaddr: 4096 bytes}), in a page image of a new id (so that no
        page key and position ever encrypts two contents), with its tags.
        The old page image is removed.  reseal() follows."""
        ck = self.ck
        from .. import images
        old = ck.pagemap(pagemap)[0] if os.path.lexists(ck.path(pagemap)) else None
        if magic_name is None:
            magic_name = ck.load(pagemap)["magic"] if old is not None else "PAGEMAP"
        ids = [int(m.group(1)) for m in map(PAGES_RE.match, os.listdir(ck.dir)) if m]
        pid = old if old is not None and not ck.encrypted else max(ids + [old or 0, 0]) + 1
        name = "pages-%d.img" % pid
        pc = ck._memory.page_cipher(name) if ck.encrypted else None
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
        ck.write(name, b"".join(data))
        if ck.encrypted:
            self.write_image("pagetags-%d.img" % pid, b"".join(tags), PAGE_TAGS_KIND)
            if old is not None and old != pid:
                self.remove_image("pagetags-%d.img" % old)
        if old is not None and old != pid:
            self.remove_image("pages-%d.img" % old)
        img = {"magic": magic_name, "entries": [{"pages_id": pid}] + [
            {"vaddr": v, "compat_nr_pages": 0, "nr_pages": n, "flags": f} for v, n, f in entries]}
        self.write_image(pagemap, images.dumps(img), kind)
        ck._memory.forget_pagemap(pagemap)
        ck._memory.forget_tags()

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
        ck = self.ck
        if not ck.encrypted:
            raise CriusecError("%s: not an encrypted checkpoint" % ck.dir)
        ck.verify()
        h = ck.header
        for name, e in ck._entries.items():
            if e[1] is None:  # from a format-1 manifest
                e[1] = os.lstat(ck.path(name)).st_size
                e[2] = hashlib.sha256(ck._plain[name]).digest()
        mpt = encode_manifest([(n, *e) for n, e in ck._entries.items()])
        ck.write(MANIFEST_IMG, stream_seal(ck.mk, h["ckpt_id"], h["aead"], h["chunk_size"], MANIFEST_KIND,
                                             MANIFEST_IMG, mpt, compress=h.get("compress") or 0))
        nh = new_header(ck.mk, h["ckpt_id"], h["recipients"] if recipients is None else recipients, h["aead"],
                        h["chunk_size"], created, manifest_digest=hashlib.sha256(mpt).digest(),
                        compress=h.get("compress") or 0)
        if parent is not None:
            _set_parent(nh, parent)
        elif h["has_parent"]:
            if h.get("parent_binding") is None:
                raise CriusecError("%s: a format-1 child has no parent binding: give its parent (parent=) to "
                                   "bind it" % ck.dir)
            _set_parent(nh, (h["parent_id"], h["parent_binding"]))
        seal_header(nh, ck.mk, signer)
        ck.write(CIPHER_IMG, encode_cipher_img(nh))
        # Read back as any reader would (the policy included); the key stays.
        ck._reset()
        return nh
