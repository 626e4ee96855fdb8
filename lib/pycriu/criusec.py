# SPDX-License-Identifier: LGPL-2.1-only
"""Reading and writing criusec (encrypted CRIU) checkpoints.

The byte formats are specified in Documentation/criusec-format.md; this
module implements them with Python's ``cryptography`` (Debian:
python3-cryptography) and is the reference reader the engine's test suite
cross-checks against (criu/criusec/tests/criusec_ref.py).

Two layers:

* primitives, on bytes: the cipher.img header (``canonical``,
  ``header_mac``, ``import_header``), image streams (``stream_seal``,
  ``stream_open``) and memory pages (``PageCipher``);
* ``Checkpoint``: an image directory.  It finds ``cipher.img`` beside the
  images, unwraps the checkpoint's key with a recipient's private key, and
  serves every image as the plaintext CRIU wrote, checked as criu checks it
  on restore (header MAC, manifest, stream AAD, chunk order, final chunk,
  page tags).  On a plain checkpoint it just reads the files.

Every failure raises ``CriusecError`` (or a subclass) whose message starts
with the name of the image at fault.
"""
import hashlib
import hmac
import io
import os
import re
import struct

try:
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding, rsa
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
    from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand
    from cryptography.exceptions import InvalidTag
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
PAGE_SIZE = 4096
PAGE_TAG_LEN = 16
MAX_COUNTER = (1 << 64) - 1
AEAD_NAMES = {1: "aes-256-gcm", 2: "chacha20-poly1305"}

DEFAULT_KEY = "/etc/pki/criu/private/key.pem"
CIPHER_IMG = "cipher.img"
MANIFEST_IMG = "cipher-manifest.img"
# The stream kind of an image is CRIU's imgset template format string.
MANIFEST_KIND = "cipher-manifest.img"
PAGE_TAGS_KIND = "pagetags"
# Written in plaintext under --encrypt (Documentation/criusec.md).
PLAIN_BY_DESIGN = (CIPHER_IMG, "stats-dump", "stats-restore")
PAGES_RE = re.compile(r"^pages-(\d+)\.img$")

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


# ---- keys (format section 2) ----

def prk_of(mk, ckpt_id):
    """HKDF-Extract(salt=ckpt_id, IKM=mk), i.e. HMAC-SHA256(ckpt_id, mk)."""
    return hmac.new(ckpt_id, mk, hashlib.sha256).digest()


def derive(prk, info, length):
    _need_crypto()
    return HKDFExpand(hashes.SHA256(), length, info).derive(prk)


def stream_key(prk, kind, name, salt):
    return derive(prk, b"criusec v1 stream\x00" + _b(kind) + b"\x00" + _b(name) + b"\x00" + salt, 32)


# ---- the cipher.img header (section 3) ----
#
# A header is a dict: version, ckpt_id, has_parent, parent_id, aead,
# chunk_size, recipients (a list of (fingerprint, wrap_alg, wrapped)), mac.

def canonical(h):
    out = b"criusec-header-v1\x00" + struct.pack(">I", h["version"]) + h["ckpt_id"]
    if h["has_parent"]:
        out += b"\x01" + h["parent_id"]
    else:
        out += b"\x00"
    out += struct.pack(">III", h["aead"], h["chunk_size"], len(h["recipients"]))
    for fpr, alg, wrapped in h["recipients"]:
        out += fpr + struct.pack(">II", alg, len(wrapped)) + wrapped
    return out


def header_mac(prk, h):
    return hmac.new(derive(prk, b"criusec v1 header mac", 32), canonical(h), hashlib.sha256).digest()


def fingerprint(pub):
    """SHA-256 of the DER SubjectPublicKeyInfo of a public key."""
    der = pub.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).digest()


def valid_chunk_size(c):
    return 4096 <= c <= 1 << 20 and not c & (c - 1)


def check_header(h):
    """Steps 1-4 of section 3.4: the fields, before any key is used."""
    if h["version"] != 1:
        raise FormatError("unsupported cipher.img header version %d" % h["version"])
    if h["aead"] not in AEAD_NAMES:
        raise FormatError("unknown AEAD %d in cipher.img header" % h["aead"])
    if not valid_chunk_size(h["chunk_size"]):
        raise FormatError("invalid chunk size %d in cipher.img header" % h["chunk_size"])
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


def import_header(h, priv):
    """Section 3.4: unwrap and return the master key, or raise FormatError."""
    _need_crypto()
    check_header(h)
    fpr = fingerprint(priv.public_key())
    mine = [r for r in h["recipients"] if r[0] == fpr]
    if not mine:
        raise PrivateKeyError("no recipient stanza matches the private key")
    if len(mine) > 1:
        raise FormatError("more than one recipient stanza matches the private key")
    if mine[0][1] != 1:
        raise FormatError("unsupported key wrap algorithm %d" % mine[0][1])
    try:
        mk = priv.decrypt(mine[0][2], padding.PKCS1v15())
    except ValueError:
        mk = b""
    if len(mk) != MK_LEN:
        # Implicit rejection: no distinct error for a bad unwrap (step 6).
        mk = os.urandom(MK_LEN)
    prk = prk_of(mk, h["ckpt_id"])
    if not hmac.compare_digest(header_mac(prk, h), h["mac"]):
        raise FormatError("cipher.img header authentication failed (altered, or not for this key)")
    return mk


# ---- streams (section 4) ----

def nonce(counter, last):
    return counter.to_bytes(11, "big") + (b"\x01" if last else b"\x00")


def _aead(aead, key):
    _need_crypto()
    return (AESGCM if aead == 1 else ChaCha20Poly1305)(key)


def stream_seal(mk, ckpt_id, aead, chunk, kind, name, pt, salt=None):
    """Seal plaintext pt as one stream (header || sealed chunks)."""
    kind, name = _label(kind, "kind"), _label(name, "name")
    if aead not in AEAD_NAMES or not valid_chunk_size(chunk):
        raise CriusecError("bad stream parameters")
    salt = os.urandom(16) if salt is None else salt
    hdr = MAGIC + bytes([1, aead, chunk.bit_length() - 1, 0]) + salt
    a = _aead(aead, stream_key(prk_of(mk, ckpt_id), kind, name, salt))
    aad = hdr + ckpt_id + kind + b"\x00" + name
    n = max(1, -(-len(pt) // chunk))
    out = [hdr]
    for i in range(n):
        out.append(a.encrypt(nonce(i, i == n - 1), bytes(pt[i * chunk:(i + 1) * chunk]), aad))
    return b"".join(out)


def stream_open(mk, ckpt_id, aead, chunk, kind, name, data):
    """Authenticate and decrypt a whole stream (section 4.4), or raise FormatError."""
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
    if hdr[11] != 0:
        raise FormatError("bad stream header (reserved byte)")
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
        return b"".join(out)


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

def page_keys(prk, name):
    name = _label(name, "name")
    return (derive(prk, b"criusec v1 pages xts\x00" + name, 64),
            derive(prk, b"criusec v1 pages tag\x00" + name, 32))


class PageCipher:
    def __init__(self, prk, name):
        _need_crypto()
        self.name = _b(name).decode()
        self.xts_key, tag_key = page_keys(prk, name)
        self.gmac = AESGCM(tag_key)

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


def load_private_key(path):
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


# ---- checkpoints ----

def _read_cipher_entry(path):
    """cipher.img (a plain CRIU image of one CipherEntry) as a header dict."""
    from .images import magic, pb
    with open(path, "rb") as f:
        data = f.read()
    try:
        m1, m2, size = struct.unpack_from("<iii", data, 0)
        if m1 != magic.by_name["IMG_COMMON"] or m2 != magic.by_name["CIPHER"] or len(data) != 12 + size:
            raise ValueError
        ce = pb.cipher_entry()
        ce.ParseFromString(data[12:])
    except Exception:
        raise FormatError("cipher.img: malformed header") from None
    return {
        "version": ce.version, "ckpt_id": ce.ckpt_id, "has_parent": 1 if ce.HasField("parent_id") else 0,
        "parent_id": ce.parent_id, "aead": ce.aead, "chunk_size": ce.chunk_size,
        "recipients": [(r.fingerprint, r.wrap_alg, r.wrapped_key) for r in ce.recipients], "mac": ce.mac,
    }


class Checkpoint:
    """An image directory, plain or encrypted.

        ck = Checkpoint("/var/lib/ckpt", keys="key.pem")
        core = ck.load("core-1234.img")             # like pycriu.images.load
        argv = ck.read_memory(1234, addr, 4096)     # decrypted, tag-checked

    keys: a path or a list of paths to PEM private keys; the one whose
    public key is a recipient of the checkpoint is used.  None: CRIU's
    default key, when readable.  Nothing is read until it is needed, and a
    plain checkpoint needs no key.
    """

    def __init__(self, imgdir, keys=None):
        self.dir = os.fspath(imgdir)
        self.keys = default_keys(keys)
        self.encrypted = os.path.exists(os.path.join(self.dir, CIPHER_IMG))
        self.header = None
        self.mk = None
        self.key_path = None
        self._manifest = None
        self._kinds = None
        self._tags = {}
        self._plain = {}
        self._pagemaps = {}
        self._parent = None

    def path(self, name):
        return os.path.join(self.dir, name)

    # -- the key --

    def unlock(self, for_image=None):
        """Import cipher.img with one of the keys (section 3.4).  Errors
        name for_image, the image wanted, or else the directory."""
        if self.mk is not None or not self.encrypted:
            return
        _need_crypto()
        if self.header is None:
            self.header = _read_cipher_entry(self.path(CIPHER_IMG))
        try:
            check_header(self.header)
        except FormatError as e:
            raise FormatError("cipher.img: %s" % str(e).replace("cipher.img ", "")) from None
        if not self.keys:
            raise EncryptedImageError("%s: encrypted %s; pass --tls-key (no readable key at %s)"
                                      % (for_image or self.dir, "image" if for_image else "checkpoint",
                                         DEFAULT_KEY))
        fprs = {r[0] for r in self.header["recipients"]}
        tried = []
        for path in self.keys:
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

    # -- the manifest --

    def manifest(self):
        """[(kind, name)] of every stream image the dump wrote."""
        if self._manifest is None:
            self.unlock(MANIFEST_IMG)
            pt = self._open_stream_file(MANIFEST_KIND, MANIFEST_IMG)
            from . import images
            try:
                img = images.loads(pt)
                if img["magic"] != "CIPHER_MANIFEST" or len(img["entries"]) != 1:
                    raise ValueError
                e = img["entries"][0]
                if len(e.get("images", [])) != len(e.get("kinds", [])):
                    raise ValueError
            except Exception:
                raise FormatError("%s: malformed" % MANIFEST_IMG) from None
            self._manifest = list(zip(e.get("kinds", []), e.get("images", [])))
            self._kinds = {n: k for k, n in self._manifest}
        return self._manifest

    def kind_of(self, name):
        if name == MANIFEST_IMG:
            return MANIFEST_KIND
        self.manifest()
        if name not in self._kinds:
            raise FormatError("%s: not an image of this checkpoint (not in its %s)" % (name, MANIFEST_IMG))
        return self._kinds[name]

    # -- streams --

    def _open_stream_file(self, kind, name):
        try:
            with open(self.path(name), "rb") as f:
                data = f.read()
        except FileNotFoundError:
            raise FormatError("%s: missing from the encrypted checkpoint (its manifest lists it)" % name) \
                if name != MANIFEST_IMG else \
                FormatError("%s is missing: the dump did not finish, or images were removed" % name) from None
        return self.open_stream(name, data, kind)

    def open_stream(self, name, data, kind=None):
        """Authenticate and decrypt the bytes of the stream image `name`."""
        self.unlock(name)
        h = self.header
        if kind is None:
            kind = self.kind_of(name)
        try:
            return stream_open(self.mk, h["ckpt_id"], h["aead"], h["chunk_size"], kind, name, data)
        except FormatError as e:
            raise FormatError("%s: %s" % (name, e)) from None

    def seal(self, name, plaintext):
        """Encrypt plaintext as the image `name` of this checkpoint (a fresh stream salt)."""
        self.unlock(name)
        h = self.header
        return stream_seal(self.mk, h["ckpt_id"], h["aead"], h["chunk_size"], self.kind_of(name), name, plaintext)

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
                if not os.path.exists(self.path(name)):
                    raise FileNotFoundError(2, "No such file or directory", self.path(name))
                self.kind_of(name)  # raises: not in the manifest
            if name not in self._plain:
                self._plain[name] = self._open_stream_file(self.kind_of(name), name)
            return self._plain[name]
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
        """Replace the file `name` by data (already sealed), atomically, owner-only."""
        tmp = self.path(".%s.crit-tmp" % name)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, self.path(name))
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    def verify(self):
        """Authenticate every image the manifest lists, as criu restore does
        before it uses any; the number of images.  (Their plaintexts are
        kept for read().)"""
        if not self.encrypted:
            return 0
        self.unlock()
        for kind, name in self.manifest():
            if name not in self._plain:
                self._plain[name] = self._open_stream_file(kind, name)
        return len(self._manifest)

    # -- pages --

    def parent(self):
        """The pre-dump parent (the "parent" link), checked to be the checkpoint this one was dumped on."""
        if self._parent is None:
            pdir = self.path("parent")
            if not os.path.isdir(pdir):
                raise CriusecError("%s: pages are in the parent checkpoint, which is missing" % self.dir)
            p = Checkpoint(pdir, self.keys)
            if self.encrypted:
                self.unlock()
                if not self.header["has_parent"] or not p.encrypted or p.ckpt_id != self.header["parent_id"]:
                    raise FormatError("%s: the parent images are not the checkpoint these images were dumped "
                                      "against" % pdir)
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

    def _page_tags(self, pages_id, npages):
        if pages_id not in self._tags:
            tname = "pagetags-%d.img" % pages_id
            self.manifest()
            if self._kinds.get(tname) != PAGE_TAGS_KIND:
                raise FormatError("pages-%d.img: its page tags (%s) are not in the checkpoint" % (pages_id, tname))
            self._tags[pages_id] = self._open_stream_file(PAGE_TAGS_KIND, tname)
        tags = self._tags[pages_id]
        if len(tags) != npages * PAGE_TAG_LEN:
            raise FormatError("pages-%d.img: %d pages, but pagetags-%d.img holds %d tags"
                              % (pages_id, npages, pages_id, len(tags) // PAGE_TAG_LEN))
        return tags

    def _read_pages(self, pages_id, index, vaddr, n):
        """n consecutive pages of pages-<id>.img from page `index`, whose first is at vaddr."""
        name = "pages-%d.img" % pages_id
        try:
            with open(self.path(name), "rb") as f:
                size = os.fstat(f.fileno()).st_size
                f.seek(index * PAGE_SIZE)
                data = f.read(n * PAGE_SIZE)
        except FileNotFoundError:
            raise FormatError("%s: missing from the checkpoint (a pagemap refers to it)" % name) from None
        if len(data) != n * PAGE_SIZE or size % PAGE_SIZE:
            raise FormatError("%s: truncated (%d bytes, page %d wanted)" % (name, size, index + n - 1))
        if not self.encrypted:
            return data
        tags = self._page_tags(pages_id, size // PAGE_SIZE)
        pc = PageCipher(self.prk, name)
        return pc.open_run(vaddr, index, data, tags[index * PAGE_TAG_LEN:(index + n) * PAGE_TAG_LEN])

    def pages_image(self, pages_id):
        """The whole plaintext of pages-<id>.img, in file order."""
        if not self.encrypted:
            with open(self.path("pages-%d.img" % pages_id), "rb") as f:
                return f.read()
        pm = self._pagemap_of_pages(pages_id)
        out, index = [], 0
        for vaddr, nr, flags in self.pagemap(pm)[1]:
            if flags & PE_PRESENT and not flags & PE_PARENT:
                out.append(self._read_pages(pages_id, index, vaddr, nr))
                index += nr
        data = b"".join(out)
        size = os.path.getsize(self.path("pages-%d.img" % pages_id))
        if len(data) != size:
            raise FormatError("pages-%d.img: %d bytes, its pagemap %s describes %d"
                              % (pages_id, size, pm, len(data)))
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
