# SPDX-License-Identifier: LGPL-2.1-only
"""cipher-manifest.img (section 10.6): the images of a checkpoint, their
kinds, sizes and digests, and which names a kind allows (engine: manifest.cpp).
"""
import hashlib
import re
import struct

from .common import DIGEST_LEN, FormatError, MANIFEST_IMG, PAGE_TAGS_KIND, PLUGIN_KIND
from .header import _image_of, _one_entry


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


# The kinds of stream image criu seals, by their template: CRIU's
# imgset_template (criu/image-desc.c), without the images a stream does not
# cover (stream_covered() in criu/criusec-glue.c: cipher.img itself,
# stats-*, and the page images, which the page cipher covers).  criu refuses
# a manifest naming a kind outside it; test_image_kinds.py checks this table
# against the criu that was built.
IMAGE_KINDS = frozenset((
    "inventory.img", "fdinfo-%u.img", "pagemap-%lu.img", "pagemap-shmem-%lu.img", "reg-files.img",
    "ext-files.img", "ns-files.img", "eventfd.img", "eventpoll.img", "eventpoll-tfd.img", "signalfd.img",
    "inotify.img", "inotify-wd.img", "fanotify.img", "fanotify-mark.img", "core-%u.img", "ids-%u.img",
    "mm-%u.img", "vmas-%u.img", "pipes.img", "pipes-data.img", "fifo.img", "fifo-data.img", "pstree.img",
    "sigacts-%u.img", "unixsk.img", "inetsk.img", "packetsk.img", "netlinksk.img", "sk-queues.img",
    "itimers-%u.img", "posix-timers-%u.img", "creds-%u.img", "utsns-%u.img", "ipcns-var-%u.img",
    "ipcns-shm-%u.img", "ipcns-msg-%u.img", "ipcns-sem-%u.img", "fs-%u.img", "remap-fpath.img",
    "ghost-file-%x.img", "memfd.img", "tcp-stream-%x.img", "mountpoints-%u.img", "netdev-%u.img",
    "netns-%u.img", "ifaddr-%u.img", "route-%u.img", "route6-%u.img", "rule-%u.img", "iptables-%u.img",
    "ip6tables-%u.img", "nftables-%u.img", "tmpfs-%u.tar.gz.img", "tmpfs-dev-%u.tar.gz.img", "autofs-%u.img",
    "binfmt-misc-%u.img", "binfmt-misc.img", "tty.img", "tty-info.img", "tty-data.img", "filelocks.img",
    "rlimit-%u.img", "signal-s-%u.img", "signal-p-%u.img", "tunfile.img", "cgroup.img", "timerfd.img",
    "cpuinfo.img", "seccomp.img", "userns-%u.img", "netns-ct-%u.img", "netns-exp-%u.img", "files.img",
    "timens-%u.img", "pidns-%u.img", "bpfmap-file.img", "bpfmap-data.img", "apparmor.img", "pidfd.img",
    "cipher-manifest.img", "irmap-cache",  # irmap-cache: its template has no .img
))


# CRIU's images the stream layer leaves out (stream_covered()): with
# IMAGE_KINDS and the page tags, every name CRIU gives an image.
UNSEALED_KINDS = ("cipher.img", "stats-%s", "pages-%u.img", "pages-%d.img", "pages-shmem-%ld.img")


def criu_image_name(name):
    """name is one of CRIU's own image names, as criusec_criu_image_name() decides."""
    return any(name_matches(p, name) for p in (*IMAGE_KINDS, *UNSEALED_KINDS, "pagetags-%u.img"))


def is_plugin_image_name(name):
    """A file of an images directory that only a plugin writes: *.img, not
    one of CRIU's own names (criu/criusec-plugin.c's is_plugin_image_name())."""
    return name.endswith(".img") and not criu_image_name(name)


def kind_pattern(kind):
    """The names images of this kind may have, as criu's kind_pattern()
    decides: an image kind of CRIU's table is its own pattern; page tags:
    pagetags-N.img; a plugin's own image, written through
    criu_image_open(): any plain name.  None for a kind criu does not know,
    which no image may have."""
    if kind == PAGE_TAGS_KIND:
        return "pagetags-%u.img"
    if kind == PLUGIN_KIND:
        return "%s"
    return kind if kind in IMAGE_KINDS else None


# ---- the manifest (section 10.6) ----

def decode_manifest(pt, with_entries=False):
    """The plaintext of cipher-manifest.img: [(name, kind, size, digest)]
    (size and digest None when the manifest has none: format 1), and with
    with_entries a fifth item, the digest of the entries of a pagemap a
    page server wrote (None for every other image).  Every name must be a
    plain file name of its kind."""
    from ..images import pb
    e = _one_entry(pt, "CIPHER_MANIFEST", pb.cipher_manifest_entry)
    if e is None:
        raise FormatError("%s: malformed" % MANIFEST_IMG)
    names, kinds, sizes, digests = list(e.images), list(e.kinds), list(e.sizes), list(e.digests)
    pms = list(e.entries) or [b""] * len(names)
    if len(names) != len(kinds) or len(pms) != len(names):
        raise FormatError("%s: malformed (%d images, %d kinds)" % (MANIFEST_IMG, len(names), len(kinds)))
    for n, k, pm in zip(names, kinds, pms):
        pattern = kind_pattern(k)
        if pattern is None or not name_matches(pattern, n):
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
    from ..images import pb
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
