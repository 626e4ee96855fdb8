"""pycriu's table of image kinds (pycriu.criusec.manifest.IMAGE_KINDS) is
CRIU's: every kind the built criu accepts in a manifest pycriu accepts, and
every kind criu refuses pycriu refuses.

Where CRIU's table comes from, and why: the candidate kinds are read from
the built tree's criu/image-desc.c (imgset_template, the table compiled into
this criu: each FD_ENTRY template with ".img", and the .fmt of the others),
plus pycriu's own table and kinds no table has.  Which of them criu accepts
is not read from its sources (stream_covered() and kind_pattern() in the
glue are logic, and may move or change shape): it is asked of the built
criu itself.  For each kind, a checkpoint is made whose manifest lists one
image of that kind, and `criu restore` reads it: a kind criu does not know
stops it with '"NAME" is not an image name of the kind KIND' before
anything is restored; a known one passes that check and fails later (the
checkpoint has no inventory).  pycriu reads the same directory, and must
refuse exactly the same kinds with the same reason.
"""
import hashlib
import os
import re
import subprocess

import pytest
from cryptography import x509

from helpers import CRIU, SRC, criusec

IMAGE_DESC = SRC / "criu" / "image-desc.c"
REFUSED = "is not an image name of the kind"
NOT_IN_ANY_TABLE = ("nonsense.img", "core.img", "pagemap-%u.img", "pagetags-%u.img", "irmap-cache.img")


def criu_templates():
    """The image names' templates of imgset_template in the built tree."""
    src = IMAGE_DESC.read_text()
    table = src[src.index("imgset_template["):]
    table = table[:table.index("\n};")]
    out = [fmt + ".img" for fmt in re.findall(r"FD_ENTRY(?:_F)?\(\s*\w+\s*,\s*\"([^\"]+)\"", table)]
    out += re.findall(r"\.fmt\s*=\s*\"([^\"]+)\"", table)
    return out


def example_name(kind):
    """A plain file name that the kind's template produces (page tags and
    plugins' images have names of their own)."""
    kind = {criusec.PAGE_TAGS_KIND: "pagetags-%u.img", criusec.PLUGIN_KIND: "plugin-%s.img"}.get(kind, kind)
    name = re.sub(r"%l*[udx]", "1", kind).replace("%s", "x")
    return name if name and "%" not in name else "x.img"


def make_checkpoint(d, cert, kind):
    """An encrypted checkpoint whose manifest lists one image, of kind, and nothing else."""
    d.mkdir()
    mk, ckpt_id, pt = os.urandom(32), os.urandom(16), b"an image of its kind"
    name = example_name(kind)
    sealed = criusec.stream_seal(mk, ckpt_id, 1, 65536, kind, name, pt)
    (d / name).write_bytes(sealed)
    mpt = criusec.encode_manifest([(name, kind, len(sealed), hashlib.sha256(pt).digest())])
    (d / criusec.MANIFEST_IMG).write_bytes(
        criusec.stream_seal(mk, ckpt_id, 1, 65536, criusec.MANIFEST_KIND, criusec.MANIFEST_IMG, mpt))
    h = criusec.new_header(mk, ckpt_id, [cert], manifest_digest=hashlib.sha256(mpt).digest())
    criusec.seal_header(h, mk)
    (d / criusec.CIPHER_IMG).write_bytes(criusec.encode_cipher_img(h))
    return name


def criu_refuses(d, key):
    r = subprocess.run([CRIU, "restore", "-D", str(d), "-W", str(d), "-o", "restore.log", "-v4", "--tls-key", key],
                       stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    log = (d / "restore.log").read_text(errors="replace")
    assert r.returncode != 0, "criu restored a checkpoint of one image:\n" + log[-2000:]
    return REFUSED in log


def pycriu_refuses(d, key):
    try:
        criusec.Checkpoint(d, key).manifest()
    except criusec.FormatError as e:
        if REFUSED in str(e):
            return True
        raise
    return False


def test_criu_templates_are_read():
    templates = criu_templates()
    # the table holds every image kind criu writes, and the ones it never seals
    assert len(templates) >= 80, templates
    for kind in ("core-%u.img", "pagemap-%lu.img", "pages-%u.img", "cipher.img", "stats-%s", "irmap-cache"):
        assert kind in templates, kind
    assert criusec.IMAGE_KINDS <= set(templates)


def test_pycriu_refuses_the_kinds_criu_refuses(tmp_path, keys):
    cert_path, key = keys["alice"]
    with open(cert_path, "rb") as f:
        cert = x509.load_pem_x509_certificate(f.read())
    kinds = sorted(set(criu_templates()) | criusec.IMAGE_KINDS | {criusec.PAGE_TAGS_KIND, criusec.PLUGIN_KIND} |
                   set(NOT_IN_ANY_TABLE))
    # The manifest's own kind has one name, the manifest's, which no manifest may list.
    kinds.remove(criusec.MANIFEST_KIND)
    verdicts = {}
    for i, kind in enumerate(kinds):
        d = tmp_path / f"k{i}"
        make_checkpoint(d, cert, kind)
        verdicts[kind] = (criu_refuses(d, key), pycriu_refuses(d, key))
    differ = {k: v for k, v in verdicts.items() if v[0] != v[1]}
    assert not differ, "(criu refuses, pycriu refuses) differ for " + repr(differ)
    # the check can fail: criu does refuse kinds, and does accept others
    refused = {k for k, v in verdicts.items() if v[0]}
    assert {"cipher.img", "pages-%u.img", "nonsense.img"} <= refused, sorted(refused)
    assert {"core-%u.img", "pagemap-%lu.img", criusec.PAGE_TAGS_KIND} & refused == set()
    accepted = {k for k in verdicts if not verdicts[k][0]}
    assert accepted == criusec.IMAGE_KINDS - {criusec.MANIFEST_KIND} | {criusec.PAGE_TAGS_KIND, criusec.PLUGIN_KIND}


@pytest.mark.parametrize("kind", ["nonsense.img", "pages-shmem-%ld.img", "stats-%s"])
def test_pycriu_will_not_add_an_image_of_an_unknown_kind(tmp_path, keys, kind):
    with open(keys["alice"][0], "rb") as f:
        cert = x509.load_pem_x509_certificate(f.read())
    ck = criusec.Checkpoint.create(tmp_path / "ck", [cert], keys=keys["alice"][1])
    with pytest.raises(criusec.CriusecError, match=REFUSED):
        ck.write_image(example_name(kind), b"data", kind)
