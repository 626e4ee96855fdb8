"""pycriu.criusec on synthetic checkpoints: the documented vectors, the
stream reader's refusals, and the page cipher, checked against an
independent computation with the cryptography primitives.  Needs no criu:
the images are made here, as criu would write them."""
import hashlib
import os
import sys

import pytest
from helpers import REPO, Synth, crit, page_of, spec_page


SRC = REPO / "build" / "src"
sys.path.insert(0, str(SRC / "lib"))
import pycriu  # noqa: E402
from pycriu import criusec  # noqa: E402

MK = bytes(range(32))
CKPT = bytes(range(0x10, 0x20))
SALT = bytes(range(0xa0, 0xb0))


# ---- Documentation/criusec-format.md section 5 ----

def test_documented_vectors():
    prk = criusec.prk_of(MK, CKPT)
    assert prk.hex() == "2f9cb1e39ef49e46b53283df54d7f626aed15a9d68fd814f0d39bed7fe2a1450"
    assert criusec.stream_key(prk, "core", "core-1.img", SALT).hex() == \
        "e163654e8bdd30bb4f4a4bee3f9ad05b7f9b71809ca5deeb8878e8fadae8ace2"
    want = {1: "435249555345430101010c00a0a1a2a3a4a5a6a7a8a9aaabacadaeaf"
               "b13f989b4b2f649f08c7125b52f6a84a081fcff1789cd21751e9b8134c594fdefcb3d957",
            2: "435249555345430101020c00a0a1a2a3a4a5a6a7a8a9aaabacadaeaf"
               "c7533769b1b93461b6318ecad7731f4d1a1f84ed1dc16c28f9c6ec1de95e09255e5802a4"}
    big_sha = {1: "c88f2e46b1ce8f9264456e4e508da41b6744f71ec8aa7777135ebb734867ae75",
               2: "2df26ee6e8eb62374934969d45115a0831aa9e8ec8bb4969e80bdd3efef67654"}
    big = bytes(i % 251 for i in range(10000))
    for aead in (1, 2):
        s = criusec.stream_seal(MK, CKPT, aead, 4096, "core", "core-1.img", b"criusec test vector\n", SALT)
        assert s.hex() == want[aead]
        assert criusec.stream_open(MK, CKPT, aead, 4096, "core", "core-1.img", s) == b"criusec test vector\n"
        s = criusec.stream_seal(MK, CKPT, aead, 4096, "pages", "pages-1.img", big, SALT)
        assert hashlib.sha256(s).hexdigest() == big_sha[aead]
        assert criusec.stream_open(MK, CKPT, aead, 4096, "pages", "pages-1.img", s) == big
    h = {"version": 1, "ckpt_id": CKPT, "has_parent": 1, "parent_id": bytes(range(0x30, 0x40)), "aead": 1,
         "chunk_size": 65536, "recipients": [(b"\xf0" * 32, 1, b"\x55" * 8)]}
    assert criusec.header_mac(prk, h).hex() == "c696e788301bf33da0d004c5faf55509a21eb450376712e3e05b27964835e7f8"


@pytest.mark.parametrize("aead", [1, 2])
def test_stream_refusals(aead):
    def opn(data, kind="core", name="core-1.img"):
        with pytest.raises(criusec.FormatError) as e:
            criusec.stream_open(MK, CKPT, aead, 4096, kind, name, bytes(data))
        return str(e.value)

    def seal(pt):
        return criusec.stream_seal(MK, CKPT, aead, 4096, "core", "core-1.img", pt)

    three = seal(os.urandom(3 * 4096))  # three full chunks, the last one final
    S = 4096 + 16
    assert opn(b"") == "stream truncated (empty input)"
    assert opn(b"CRIUSEC") == "stream truncated (incomplete stream header)"
    assert opn(b"\x54\x56\x43\x19" + bytes(40)) == "not an encrypted image (bad magic)"
    assert opn(three[:28 + 2 * S]) == "stream truncated (no final chunk)"
    assert opn(three[:28 + S + 10]) == "stream truncated (partial chunk 1)"
    assert opn(three[:28 + S + 16]) == "stream truncated (partial chunk 1)"
    assert opn(three + b"\0" * 100) == "trailing data after final chunk"
    # a short final chunk with bytes appended is just a bad chunk
    assert opn(seal(b"x" * 5000) + b"\0" * S) == "chunk 1 failed authentication"
    flipped = bytearray(three)
    flipped[28 + S + 7] ^= 1
    assert opn(flipped) == "chunk 1 failed authentication"
    assert opn(three[:28] + three[28 + S:28 + 2 * S] + three[28:28 + S] + three[28 + 2 * S:]) == \
        "chunk 0 failed authentication"
    assert opn(three, "core", "core-2.img") == "chunk 0 failed authentication"
    assert opn(three, "mm-%u.img", "core-1.img") == "chunk 0 failed authentication"
    assert "chunk size" in opn(criusec.stream_seal(MK, CKPT, aead, 8192, "core", "core-1.img", b"x"))
    other = criusec.stream_seal(MK, bytes(16), aead, 4096, "core", "core-1.img", b"x")
    assert opn(other) == "chunk 0 failed authentication"
    # the empty plaintext is one empty chunk, and round-trips
    assert criusec.stream_open(MK, CKPT, aead, 4096, "core", "core-1.img", seal(b"")) == b""


# ---- the page cipher, computed independently here ----


# Pinned, so that the engine (criu/criusec/src/page_cipher.cpp) can be checked
# against the same numbers: MK 00..1f, ckpt_id 10..1f, pages-3.img,
# v = 0x7f0000001000, i = 5, page = SHA-256("criusec page") repeated.
PAGE_VECTOR = {"xts_key": "cbb77e7843180658981a51b39be42ae4fadcd821dd87ce47d066edab8e92cadd"
                          "865df9c055fa1d322c00ff87d20162fb92ddf9e62897ba52a54d770afad2d9b5",
               "tag_key": "09d357791cc1738ee7ac6aec44b93ac93b4bdb9928a3868c96ca1adaff58c683",
               "ct_head": "12bffb0020b6b97c7f3ea514b8f8b99a8a426fab39fa6e3ff4b3004668da8df2",
               "ct_sha256": "94af548c0d60f9a325d81c715f02c2e8983a4999ba99285b0acd7d5ca5275cfb",
               "tag": "8a38be787c6686a678bd0008cb49c805"}


def test_page_cipher_matches_the_specification():
    prk = criusec.prk_of(MK, CKPT)
    pc = criusec.PageCipher(prk, "pages-3.img")
    for v, i in ((0x7f0000001000, 5), (0, 0), (0xfffffffffffff000, (1 << 64) - 1), (0x1000, 1)):
        page = page_of(b"%d-%d" % (v, i))
        ct, tag = pc.seal(v, i, page)
        assert (ct, tag) == spec_page(prk, b"pages-3.img", v, i, page)
        assert ct != page and len(ct) == 4096 and len(tag) == 16
        assert pc.open(v, i, ct, tag) == page
    # the key depends on the image name; the tweak on address and number
    page = page_of(b"same")
    c1 = pc.seal(0x1000, 1, page)
    assert c1 != criusec.PageCipher(prk, "pages-4.img").seal(0x1000, 1, page)
    assert c1[0] != pc.seal(0x2000, 1, page)[0] and c1[0] != pc.seal(0x1000, 2, page)[0]


def test_page_vector():
    prk = criusec.prk_of(MK, CKPT)
    xts_key, tag_key = criusec.page_keys(prk, "pages-3.img")
    ct, tag = criusec.PageCipher(prk, "pages-3.img").seal(0x7f0000001000, 5, page_of(b"criusec page"))
    got = {"xts_key": xts_key.hex(), "tag_key": tag_key.hex(), "ct_head": ct[:32].hex(),
           "ct_sha256": hashlib.sha256(ct).hexdigest(), "tag": tag.hex()}
    assert got == PAGE_VECTOR


def test_page_refusals():
    prk = criusec.prk_of(MK, CKPT)
    pc = criusec.PageCipher(prk, "pages-3.img")
    p0, p1 = page_of(b"0"), page_of(b"1")
    c0, t0 = pc.seal(0x1000, 0, p0)
    c1, t1 = pc.seal(0x2000, 1, p1)
    bad = bytearray(c0)
    bad[100] ^= 0x80
    cases = [
        (0x1000, 0, bytes(bad), t0),                    # flipped ciphertext
        (0x1000, 0, c0, bytes(16)),                     # wrong tag
        (0x3000, 0, c0, t0),                            # moved to another address
        (0x1000, 1, c0, t0),                            # moved to another slot
    ]
    for v, i, c, t in cases:
        with pytest.raises(criusec.FormatError, match=r"pages-3.img: page %d \(vaddr 0x%x\) failed" % (i, v)):
            pc.open(v, i, c, t)
    with pytest.raises(criusec.FormatError):
        criusec.PageCipher(prk, "pages-4.img").open(0x1000, 0, c0, t0)
    # a run: every tag is checked before anything is decrypted
    assert pc.open_run(0x1000, 0, c0 + c1, t0 + t1) == p0 + p1
    with pytest.raises(criusec.FormatError, match="page 1"):
        pc.open_run(0x1000, 0, c0 + c0, t0 + t1)


# ---- a synthetic encrypted checkpoint, with pages encrypted as specified ----


P = criusec.PE_PRESENT
LAYOUT = [(0x10000, 2, P), (0x20000, 1, criusec.PE_PARENT), (0x30000, 3, P), (0x40000, 1, criusec.PE_LAZY)]


@pytest.fixture
def chain(tmp_path, rsa_keys):
    key, _ = rsa_keys["alice"]
    parent = Synth(tmp_path / "parent", key, [(0x20000, 1, P), (0x30000, 1, P)])
    child = Synth(tmp_path / "child", key, LAYOUT, parent=parent, aead=2)
    os.symlink("../parent", tmp_path / "child" / "parent")
    return parent, child


def test_read_memory_decrypts_pages_and_follows_the_parent(chain, rsa_keys):
    parent, child = chain
    ck = criusec.Checkpoint(child.dir, rsa_keys["alice"][1])
    assert ck.read_memory(42, 0x10000, 8192) == child.plain[0x10000] + child.plain[0x11000]
    assert ck.read_memory(42, 0x30ff0, 0x20) == child.plain[0x30000][-16:] + child.plain[0x31000][:16]
    assert ck.read_memory(42, 0x20010, 100) == parent.plain[0x20000][16:116]
    got = dict(ck.pages("pagemap-42.img"))
    assert sorted(got) == [0x10000, 0x11000, 0x20000, 0x30000, 0x31000, 0x32000]
    for v, page in got.items():
        assert page == (child.plain.get(v) or parent.plain[v])
    assert dict(ck.pages("pagemap-42.img", 0x31000, 0x31001)) == {0x31000: child.plain[0x31000]}
    # pages-1.img as a whole, in file order
    assert ck.read("pages-1.img") == b"".join(child.plain[v] for v in sorted(child.plain))
    for absent in (0x12000, 0x40000, 0x50000):  # a hole, a lazy page, nothing
        with pytest.raises(criusec.CriusecError, match="page 0x%x is not in the checkpoint" % absent):
            ck.read_memory(42, absent, 1)


def test_crit_x_mems_pages(chain, rsa_keys):
    _, child = chain
    r = crit("x", child.dir, "mems", "--pages", "30ff0-31010", "--tls-key", rsa_keys["alice"][1])
    lines = r.stdout.splitlines()
    assert lines[0] == "42"
    want = child.plain[0x30000][-16:]
    assert lines[1].split()[:17] == ["0000000000030ff0"] + ["%02x" % c for c in want]
    assert lines[2].split()[0] == "0000000000031000" and len(lines) == 3


def flip(path, offset):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_tampered_pages_are_refused(chain, rsa_keys):
    _, child = chain
    key = rsa_keys["alice"][1]
    flip(child.dir / "pages-1.img", 3 * 4096 + 17)  # page 3: vaddr 0x31000
    ck = criusec.Checkpoint(child.dir, key)
    assert ck.read_memory(42, 0x30000, 4096) == child.plain[0x30000]
    with pytest.raises(criusec.FormatError, match=r"pages-1.img: page 3 \(vaddr 0x31000\) failed authentication"):
        ck.read_memory(42, 0x30000, 3 * 4096)
    r = crit("x", child.dir, "mems", "--pages", "31000+10", "--tls-key", key, check=False)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.strip() == "crit: pages-1.img: page 3 (vaddr 0x31000) failed authentication"


def test_swapped_and_truncated_pages_are_refused(chain, rsa_keys):
    _, child = chain
    key = rsa_keys["alice"][1]
    pages = (child.dir / "pages-1.img").read_bytes()
    (child.dir / "pages-1.img").write_bytes(pages[4096:8192] + pages[:4096] + pages[8192:])
    with pytest.raises(criusec.FormatError, match="page 0"):
        criusec.Checkpoint(child.dir, key).read_memory(42, 0x10000, 1)
    (child.dir / "pages-1.img").write_bytes(pages[:-4096])
    with pytest.raises(criusec.FormatError, match="pages-1.img"):
        criusec.Checkpoint(child.dir, key).read_memory(42, 0x32000, 1)
    (child.dir / "pages-1.img").write_bytes(pages + bytes(4096))
    with pytest.raises(criusec.FormatError, match="24576 bytes, but the dump wrote 20480: truncated or extended"):
        criusec.Checkpoint(child.dir, key).read_memory(42, 0x10000, 1)


def test_page_tags_from_another_checkpoint_are_refused(tmp_path, rsa_keys):
    key, path = rsa_keys["alice"]
    a = Synth(tmp_path / "a", key, [(0x10000, 2, P)])
    Synth(tmp_path / "b", key, [(0x10000, 2, P)])
    os.replace(tmp_path / "b" / "pagetags-1.img", a.dir / "pagetags-1.img")
    with pytest.raises(criusec.FormatError, match="pagetags-1.img: chunk 0 failed authentication"):
        criusec.Checkpoint(a.dir, path).read_memory(42, 0x10000, 1)
    (a.dir / "pagetags-1.img").unlink()
    with pytest.raises(criusec.FormatError, match="pagetags-1.img: missing"):
        criusec.Checkpoint(a.dir, path).read_memory(42, 0x10000, 1)


def test_parent_must_be_the_one_dumped_against(tmp_path, rsa_keys):
    key, path = rsa_keys["alice"]
    Synth(tmp_path / "other", key, [(0x20000, 1, P)])
    child = Synth(tmp_path / "child", key, LAYOUT, parent=(os.urandom(16), os.urandom(32)))
    os.symlink("../other", child.dir / "parent")
    ck = criusec.Checkpoint(child.dir, path)
    assert ck.read_memory(42, 0x10000, 10) == child.plain[0x10000][:10]
    with pytest.raises(criusec.FormatError, match="not the checkpoint these images were dumped against"):
        ck.read_memory(42, 0x20000, 10)


def test_pages_without_tags_are_refused(tmp_path, rsa_keys):
    """As restore does: pages of an encrypted checkpoint must have their tags."""
    key, path = rsa_keys["alice"]
    s = Synth(tmp_path / "notags", key, [(0x10000, 2, P)], tags=False)
    with pytest.raises(criusec.FormatError, match=r"pages-1.img: its page tags \(pagetags-1.img\) are not in"):
        criusec.Checkpoint(s.dir, path).read_memory(42, 0x11000, 4096)


def test_keys_and_errors(tmp_path, rsa_keys):
    key, path = rsa_keys["alice"]
    s = Synth(tmp_path / "ck", key, [(0x10000, 1, P)])
    assert criusec.Checkpoint(s.dir, [rsa_keys["mallory"][1], path]).load("pstree.img")["entries"][0]["pid"] == 42
    with pytest.raises(criusec.PrivateKeyError, match="pstree.img: no recipient stanza"):
        criusec.Checkpoint(s.dir, rsa_keys["mallory"][1]).load("pstree.img")
    with pytest.raises(criusec.PrivateKeyError, match="No such file"):
        criusec.Checkpoint(s.dir, tmp_path / "nope.pem").load("pstree.img")
    if not os.access(criusec.DEFAULT_KEY, os.R_OK):
        with pytest.raises(criusec.EncryptedImageError, match="pstree.img: encrypted image; pass --tls-key"):
            criusec.Checkpoint(s.dir).load("pstree.img")
    with pytest.raises(pycriu.images.EncryptedImageException):
        pycriu.images.load(open(s.dir / "pstree.img", "rb"))
    flip(s.dir / "cipher.img", 40)
    with pytest.raises(criusec.CriusecError, match="cipher.img"):
        criusec.Checkpoint(s.dir, path).load("pstree.img")
