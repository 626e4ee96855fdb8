# SPDX-License-Identifier: LGPL-2.1-only
"""Checkpoint, an image directory, plain or encrypted: its header, the
policy's word on it and the key that opens it, its manifest, and every
image read as criu restore checks it (section 10.7).  Its pages are read
by memory.PageReader, its edits made by edit.Editor, its description
written by report; Checkpoint's methods for those hand over to them.
"""
import errno
import hashlib
import hmac
import io
import os
import stat

from .common import (
    CIPHER_IMG, CriusecError, DEFAULT_KEY, EncryptedImageError, FormatError, ID_LEN, MANIFEST_IMG, MANIFEST_KIND,
    MK_LEN, PAGES_RE, PE_PARENT, PE_PRESENT, PLAIN_BY_DESIGN, PrivateKeyError, _label, _need_crypto,
    replace_file)
from .edit import Editor
from .header import check_header, import_header, new_header, parent_binding, read_cipher_img
from .kdf import prk_of
from .keys import _no_pkcs11, default_keys, fingerprint, is_pkcs11_url, load_private_key
from .manifest import _check_name, decode_manifest, is_plugin_image_name, pagemap_digest
from .memory import PageReader
from .pages import pages_described, parse_regions
from .policy import Policy
from .report import describe as _describe, summary as _summary
from .stream import is_stream, stream_open, stream_seal


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
        self._editor = Editor(self)
        self._reset()

    def _reset(self):
        self.header = None      # checked, and accepted by the policy
        self.report = None      # Policy.evaluate() of the header
        self._manifest = None   # [(kind, name)]
        self._entries = None    # name -> [kind, size, digest]
        self._kinds = None
        self._plain = {}        # name -> plaintext, as verified
        self._parent = None
        self._memory = PageReader(self)

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

    def read(self, name):
        """The plaintext of image `name`, checked as criu checks it.

        FileNotFoundError for an image this checkpoint does not have."""
        if self.encrypted and name not in PLAIN_BY_DESIGN:
            m = PAGES_RE.match(name)
            if m:
                return self._memory.pages_image(int(m.group(1)))
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
        from .. import images
        return images.load(self.open(name), pretty, no_payload)

    def dumps(self, img, name):
        """Like pycriu.images.dumps(), encrypted for the image `name` when the checkpoint is."""
        from .. import images
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
        self._check_unlisted()
        return n

    def _check_unlisted(self):
        """As criu restore does: an image file in the directory that the
        manifest does not list (a plugin's image written in clear, or one
        added) makes the checkpoint refused."""
        listed = {name for _, name in self.manifest()}
        for name in sorted(os.listdir(self.dir)):
            if is_plugin_image_name(name) and name not in listed:
                raise FormatError("%s is in the images directory but not in the checkpoint's manifest (a plugin's "
                                  "image written in clear, or added): refusing the encrypted checkpoint" % name)

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
            pages_id, entries = self._memory.pagemap(name)
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

    # -- what the header says (report) --

    def describe(self):
        """The checkpoint's header and what this reader makes of it, as a
        dict (report.describe)."""
        return _describe(self)

    def summary(self):
        """describe() as lines of text, for people."""
        return _summary(self)

    # -- pages (memory.PageReader) --

    def pagemap(self, name):
        """(pages_id, [(vaddr, nr_pages, flags)]) of a pagemap image, with old-format entries normalised."""
        return self._memory.pagemap(name)

    def pages_image(self, pages_id):
        """The whole plaintext of pages-<id>.img, in file order."""
        return self._memory.pages_image(pages_id)

    def pages(self, pagemap, start=0, end=1 << 64):
        """Yield (vaddr, page) for every page the pagemap image `pagemap` has
        in [start, end), in address order, decrypted and tag-checked, from
        the parent checkpoints for pages that are there."""
        return self._memory.pages(pagemap, start, end)

    def read_memory(self, pid, addr, length, pagemap=None):
        """length bytes of task `pid`'s memory at addr, as dumped (CriusecError
        when a page of the range is not in the checkpoint)."""
        return self._memory.read_memory(pid, addr, length, pagemap)

    # -- editing, and sealing again (edit.Editor) --

    def write_image(self, name, plaintext, kind=None):
        """Replace the image `name` by plaintext (or add it, given its kind),
        sealed and recorded in the manifest; reseal() follows."""
        self._editor.write_image(name, plaintext, kind)

    def remove_image(self, name):
        """Remove an image and its manifest entry (reseal() follows)."""
        self._editor.remove_image(name)

    def write_pages(self, pagemap, entries, pages, kind=None, magic_name=None):
        """Replace (or add) a pagemap image and its pages; reseal() follows."""
        self._editor.write_pages(pagemap, entries, pages, kind, magic_name)

    def reseal(self, signer=None, created=None, parent=None, recipients=None):
        """Seal the checkpoint again, in format 2, after edits; returns the new header."""
        return self._editor.reseal(signer, created, parent, recipients)
