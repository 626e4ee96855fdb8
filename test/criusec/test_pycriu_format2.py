"""Format 2 (Documentation/criusec-format.md section 10) in pycriu and crit,
on synthetic checkpoints: the signed header for every key type, its test
vectors, tampering with each field, signer chains and pinned signers, the
restore policy, the manifest's sizes and digests, the parent binding, and
editing a checkpoint and sealing it again.  Needs no criu."""
import contextlib
import hashlib
import hmac
import json
import os
import pathlib
import shutil
import struct
import sys

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

import pki_util
from pki_util import KEY_TYPES, SIG_ALG_OF, Pki, make_cert

from helpers import Synth, crit, image, manifest_bytes, page_of, refusal  # helpers puts build/src/lib on sys.path
import pycriu  # noqa: E402
from pycriu import criusec  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(REPO / "criu" / "criusec" / "tests"))
import criusec_ref  # noqa: E402

P = criusec.PE_PRESENT


@pytest.fixture(scope="module")
def pki():
    return Pki()


@pytest.fixture(scope="module")
def pem(pki, tmp_path_factory):
    """PEM files: trust files (root.pem, inter.pem, ...) and key/chain pairs of every signer."""
    d = tmp_path_factory.mktemp("pki")
    for n in ("root", "inter", "edroot", "stranger", "selfsigned"):
        (d / f"{n}.pem").write_bytes(getattr(pki, n).pem)
    return d


def signer(pki, leaf, **kw):
    return criusec.Signer(leaf.key, [c.der for c in pki.chain(leaf)], **kw)


def policy(trust=None, **kw):
    """A policy that ignores the host (the tests' /etc/criu is empty anyway)."""
    if trust is None:
        return criusec.Policy.permissive() if not kw else criusec.Policy(trust=criusec.TrustStore(), **kw)
    return criusec.Policy(trust=[str(t) for t in ([trust] if isinstance(trust, (str, pathlib.Path)) else trust)],
                          **kw)


def reader(s, key_path, **kw):
    return criusec.Checkpoint(s.dir, key_path, policy=policy(**kw))


def pid_of(ck):
    return ck.load("pstree.img")["entries"][0]["pid"]


# Which files a reader opens: every open() and os.open() (Python audit events).
_opened = None


def _audit(event, args):
    if event == "open" and _opened is not None and isinstance(args[0], (str, bytes, os.PathLike)):
        _opened.append(os.path.abspath(os.fsdecode(args[0])))


sys.addaudithook(_audit)


@contextlib.contextmanager
def opened_files():
    global _opened
    _opened = []
    try:
        yield _opened
    finally:
        _opened = None


def opened_under(files, d):
    d = os.path.realpath(d)
    return sorted({os.path.relpath(os.path.realpath(f), d) for f in files
                   if os.path.realpath(f).startswith(d + "/")})


# ---- section 10.9: test vectors, and canonical2 computed independently from the text ----

VECTORS2 = {
    "parent_prk": "2127aa6760c7eb9f6afdb76f23a17e59838aa0c3ae666ecf813c58450e2d4f56",
    "binding_key": "e280de02b3cb925775de42c75fa4c8a5915c6bb1cd5c425e2925f337e71c79a2",
    "parent_binding": "9778cf4b19055bf68cf5bbfd3b8b4357c7cac3bd7814f206f32472d40a76b0ee",
    "unsigned_canonical2": "637269757365632d6865616465722d76320000000002101112131415161718191a1b1c1d1e1f"
                           "000000006955b9000000000001000100000000000"
                           "0c0c1c2c3c4c5c6c7c8c9cacbcccdcecfd0d1d2d3d4d5d6d7d8d9dadbdcdddedf00000001"
                           "f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0"
                           "0000000100000008555555555555555500000000" "00000000",
    "unsigned_mac": "550190590171022cc3dd847f1cf1e931e549ffd6eb82a8a5b4b391f679720f86",
    "signer_cert": "308201193081cca00302010202020c51300506032b657030253123302106035504030c1a6372697573"
                   "6563207465737420766563746f72207369676e6572301e170d3236303130313030303030305a170d33"
                   "36303130313030303030305a30253123302106035504030c1a63726975736563207465737420766563"
                   "746f72207369676e6572302a300506032b6570032100174553b456dddfc6908ecab1c101fe6ab21e2b"
                   "aa0617795b7d43a63482993fd5a320301e300c0603551d130101ff04023000300e0603551d0f0101ff"
                   "040403020780300506032b65700341001ce18d9ef49c88d4a8cfc112bdcf0b3c2e01d6f3c96ad11474"
                   "2df8fb3759a1ab14ae97cdf2634176b0615580ec0fabb2a7a5399991b16a29803c5c579e335509",
    "signed_canonical2_len": "488",
    "signed_canonical2_sha256": "977a1c10d4c39f173deb3276bde5cf7c6602275de24418855b0b95bdbaafa2e3",
    "signed_canonical2_head": "637269757365632d6865616465722d76320000000002101112131415161718191a1b1c1d1e1f"
                              "000000006955b90001303132333435363738393a3b3c3d3e3f"
                              "9778cf4b19055bf68cf5bbfd3b8b4357c7cac3bd7814f206f32472d40a76b0ee000000010001000000000002"
                              "c0c1c2c3c4c5c6c7c8c9cacbcccdcecfd0d1d2d3d4d5d6d7d8d9dadbdcdddedf00000001"
                              "f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0"
                              "00000001000000085555555555555555" "00000005000000010000011d",
    "signature": "c118ff8c36ca0cf8a01e5eed7d9d14f82af7a75870d7aae1e79c50909ebd012c"
                 "19bc7851214b459e25030ac6f446bb71fbf948e6bb47daaeeb73d70976475609",
    "signed_mac": "1066d718e3ad7696d1538b49f158e87c65e9391ac27238df2f9772f7b81a5141",
}


def spec_canonical2(ckpt, created, parent, aead, chunk, compress, mdigest, stanzas, sig_alg, certs):
    """canonical2 exactly as section 10.2 writes it, field by field."""
    out = b"criusec-header-v2" + b"\x00" + (2).to_bytes(4, "big") + ckpt + created.to_bytes(8, "big")
    out += (b"\x01" + parent[0] + parent[1]) if parent else b"\x00"
    out += aead.to_bytes(4, "big") + chunk.to_bytes(4, "big") + compress.to_bytes(4, "big")
    out += mdigest + len(stanzas).to_bytes(4, "big")
    for fpr, alg, wrapped in stanzas:
        out += fpr + alg.to_bytes(4, "big") + len(wrapped).to_bytes(4, "big") + wrapped
    out += sig_alg.to_bytes(4, "big") + len(certs).to_bytes(4, "big")
    for c in certs:
        out += len(c).to_bytes(4, "big") + c
    return out


def test_format2_vectors():
    assert criusec_ref.doc_vectors2() == VECTORS2
    mk, ckpt = bytes(range(32)), bytes(range(0x10, 0x20))
    parent_mk, parent_id = bytes(range(0x40, 0x60)), bytes(range(0x30, 0x40))
    # the binding, with the raw primitives
    pprk = hmac.new(parent_id, parent_mk, hashlib.sha256).digest()
    bkey = HKDFExpand(hashes.SHA256(), 32, b"criusec v1 child binding").derive(pprk)
    binding = hmac.new(bkey, b"criusec-child-v1\x00" + parent_id + ckpt, hashlib.sha256).digest()
    assert (pprk.hex(), bkey.hex(), binding.hex()) == \
        (VECTORS2["parent_prk"], VECTORS2["binding_key"], VECTORS2["parent_binding"])
    stanzas = [(b"\xf0" * 32, 1, b"\x55" * 8)]
    mdigest = bytes(range(0xc0, 0xe0))
    unsigned = spec_canonical2(ckpt, 1767225600, None, 1, 65536, 0, mdigest, stanzas, 0, [])
    assert unsigned.hex() == VECTORS2["unsigned_canonical2"]
    mac_key = HKDFExpand(hashes.SHA256(), 32, b"criusec v1 header mac").derive(criusec.prk_of(mk, ckpt))
    assert hmac.new(mac_key, unsigned + bytes(4), hashlib.sha256).hexdigest() == VECTORS2["unsigned_mac"]
    der = bytes.fromhex(VECTORS2["signer_cert"])
    signed = spec_canonical2(ckpt, 1767225600, (parent_id, binding), 1, 65536, 2, mdigest, stanzas, 5, [der])
    assert len(signed) == 488 and hashlib.sha256(signed).hexdigest() == VECTORS2["signed_canonical2_sha256"]
    assert signed.hex().startswith(VECTORS2["signed_canonical2_head"]) and signed.endswith(der)
    key = ed25519.Ed25519PrivateKey.from_private_bytes(bytes(range(0x60, 0x80)))
    sig = key.sign(signed)
    assert sig.hex() == VECTORS2["signature"]
    assert hmac.new(mac_key, signed + struct.pack(">I", 64) + sig, hashlib.sha256).hexdigest() == \
        VECTORS2["signed_mac"]
    # and the module, on the same header
    h = {"version": 2, "ckpt_id": ckpt, "created": 1767225600, "has_parent": 1, "parent_id": parent_id,
         "parent_binding": binding, "aead": 1, "chunk_size": 65536, "manifest_digest": mdigest,
         "recipients": stanzas, "sig_alg": 5, "signer_certs": [der], "signature": sig, "compress": 2}
    assert criusec.canonical2(h) == signed
    assert criusec.header_mac(criusec.prk_of(mk, ckpt), h).hex() == VECTORS2["signed_mac"]
    criusec.verify_signature(5, der, signed, sig)
    # the certificate may sign (10.4 steps 2-3) until 2036, as a pinned signer
    pinned = criusec.TrustStore()
    pinned.add_pem(pki_util.x509.load_der_x509_certificate(der).public_bytes(pki_util.serialization.Encoding.PEM))
    assert pinned.verify([der], now=1767225600) == "pinned"
    with pytest.raises(criusec.UntrustedSignerError, match="has expired"):
        pinned.verify([der], now=2082758401)


def test_format2_vectors_are_documented():
    doc = (REPO / "Documentation" / "criusec-format.md").read_text()
    section = doc[doc.index("### 10.9 Test vectors"):]
    text = "".join(section.split())
    for k, v in VECTORS2.items():
        assert v in text, f"10.9 lacks {k}"


# ---- round trips for every key type ----

@pytest.mark.parametrize("kt,alg", [(k, SIG_ALG_OF[k]) for k in KEY_TYPES] + [("rsa", 2)])
def test_signed_header_round_trip(kt, alg, pki, pem, rsa_keys, tmp_path):
    key, path = rsa_keys["alice"]
    s = signer(pki, pki.leaf[kt], alg=None if alg == SIG_ALG_OF[kt] else alg)
    assert s.alg == alg
    syn = Synth(tmp_path / "ck", key, [(0x10000, 2, P)], signer=s, created=1767225600 + 7)
    h = criusec.read_cipher_img(syn.dir / "cipher.img")
    assert h["version"] == 2 and h["sig_alg"] == alg and h["created"] == 1767225600 + 7
    assert h["signer_certs"] == [pki.leaf[kt].der, pki.inter.der]
    assert sorted(h["v2_fields"]) == sorted(["created", "manifest_digest", "sig_alg", "signer_certs", "signature", "compress"])
    assert h["manifest_digest"] == hashlib.sha256(syn.mf).digest()
    criusec.verify_signature(alg, h["signer_certs"][0], criusec.canonical2(h), h["signature"])
    assert criusec.import_header(h, key) == syn.mk
    ck = reader(syn, path, trust=pem / "root.pem")
    assert pid_of(ck) == 42 and ck.read_memory(42, 0x11000, 4096) == page_of(b"11000")
    assert ck.report["signature"] == "verified" and ck.report["trusted"] == "CA CN=criusec test root"
    assert ck.report["signer"] == "CN=signer-" + kt and ck.report["alg"] == criusec.SIG_ALGS[alg]
    # the encoder writes back what it read
    assert criusec.encode_cipher_img(h) == (syn.dir / "cipher.img").read_bytes()


def test_sig_alg_must_match_the_signer_key(pki, rsa_keys, tmp_path):
    key, path = rsa_keys["alice"]
    for kt, wrong in (("ed25519", 3), ("p256", 4), ("p384", 3), ("rsa", 5), ("p256", 1)):
        with pytest.raises(criusec.CriusecError, match="cannot sign a checkpoint with " + criusec.SIG_ALGS[wrong]):
            signer(pki, pki.leaf[kt], alg=wrong)
        # a header that claims the wrong algorithm (made by hand, MAC'd)
        syn = Synth(tmp_path / f"{kt}-{wrong}", key, [(0x10000, 1, P)], signer=signer(pki, pki.leaf[kt]))
        syn.header["sig_alg"] = wrong
        syn.header["mac"] = criusec.header_mac(criusec.prk_of(syn.mk, syn.ckpt_id), syn.header)
        syn.write_header()
        with pytest.raises(criusec.FormatError, match="signature algorithm %s does not match the signer's"
                           % criusec.SIG_ALGS[wrong]):
            pid_of(reader(syn, path))
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    with pytest.raises(criusec.CriusecError, match="RSA-1024 key cannot sign"):
        criusec.Signer(small, [make_cert("small", small, pki.inter).der])


def test_signer_refuses_certificates_that_may_not_sign(pki, rsa_keys):
    with pytest.raises(criusec.CriusecError, match="signer-expired has expired"):
        signer(pki, pki.expired)
    with pytest.raises(criusec.CriusecError, match="signer-future is not yet valid"):
        signer(pki, pki.future)
    with pytest.raises(criusec.CriusecError, match="signer-encipher-only is not allowed to sign"):
        signer(pki, pki.encipher)
    with pytest.raises(criusec.CriusecError, match="is not the signing key's"):
        criusec.Signer(pki.leaf["p256"].key, [pki.leaf["p384"].der])
    assert signer(pki, pki.nousage).alg == 3  # no keyUsage: any use


def test_signer_from_files(pki, tmp_path):
    kp, cp = pki.leaf["p384"].write(tmp_path, [pki.inter])
    s = criusec.Signer.from_files(kp, cp)
    assert s.alg == 4 and s.chain == [pki.leaf["p384"].der, pki.inter.der] and s.subject == "CN=signer-p384"
    with pytest.raises(criusec.CriusecError, match="signing key .*nope.key: No such file"):
        criusec.Signer.from_files(tmp_path / "nope.key", cp)
    with pytest.raises(criusec.CriusecError, match="holds no PEM certificate"):
        criusec.Signer.from_files(kp, kp)


# ---- tampering with each field ----

def _flip(b):
    b = bytearray(b)
    b[len(b) // 2] ^= 0x01
    return bytes(b)


TAMPER = {
    "ckpt_id": lambda h, c, o: {"ckpt_id": _flip(h["ckpt_id"])},
    "created": lambda h, c, o: {"created": h["created"] + 1},
    "drop parent": lambda h, c, o: {"has_parent": 0, "parent_id": b"", "parent_binding": None},
    "parent_id": lambda h, c, o: {"parent_id": o.ckpt_id},
    "parent_binding": lambda h, c, o: {"parent_binding": _flip(h["parent_binding"])},
    "aead": lambda h, c, o: {"aead": 2},
    "chunk_size": lambda h, c, o: {"chunk_size": 8192},
    "manifest_digest": lambda h, c, o: {"manifest_digest": _flip(h["manifest_digest"])},
    "wrapped key": lambda h, c, o: {"recipients": [(f, a, _flip(w)) for f, a, w in h["recipients"]]},
    "extra recipient": lambda h, c, o: {"recipients": h["recipients"] + o.header["recipients"]},
    "recipient order": lambda h, c, o: {"recipients": h["recipients"][::-1]},
    "signer chain": lambda h, c, o: {"signer_certs": h["signer_certs"][:1]},
    # the same key and subject, certified again
    "signer cert": lambda h, c, o: {"signer_certs": [c.reissued] + h["signer_certs"][1:]},
    "signature": lambda h, c, o: {"signature": _flip(h["signature"])},
}


@pytest.fixture(scope="module")
def family(pki, rsa_keys, tmp_path_factory):
    """A signed child (two recipients) of a parent, and an unrelated signed checkpoint."""
    d = tmp_path_factory.mktemp("family")
    key = rsa_keys["alice"][0]
    parent = Synth(d / "parent", key, [(0x20000, 1, P)], signer=signer(pki, pki.leaf["p256"]))
    child = Synth(d / "child", key, [(0x10000, 1, P), (0x20000, 1, criusec.PE_PARENT)], parent=parent,
                  signer=signer(pki, pki.leaf["ed25519"]), recipients=[rsa_keys["mallory"][0].public_key()])
    os.symlink(parent.dir, child.dir / "parent")
    child.reissued = make_cert("signer-ed25519", pki.leaf["ed25519"].key, pki.inter).der
    other = Synth(d / "other", key, [(0x20000, 1, P)], signer=signer(pki, pki.leaf["rsa"]))
    return parent, child, other


@pytest.mark.parametrize("field", sorted(TAMPER))
def test_every_header_field_is_covered(field, family, rsa_keys, pem, tmp_path):
    """Changed in cipher.img alone, every field fails the signature or the
    MAC; changed by a recipient, who can MAC anything, it fails the
    signature."""
    _, child, other = family
    path = rsa_keys["alice"][1]
    for remac in (False, True):
        d = tmp_path / f"remac-{remac}"
        shutil.copytree(child.dir, d, symlinks=True)
        h = dict(child.header)
        h.update(TAMPER[field](h, child, other))
        if remac:
            h["mac"] = criusec.header_mac(criusec.prk_of(child.mk, h["ckpt_id"]), h)
        (d / "cipher.img").write_bytes(criusec.encode_cipher_img(h))
        for trust in (None, pem / "root.pem"):
            with pytest.raises(criusec.FormatError) as e:
                criusec.Checkpoint(d, path, policy=policy(trust)).read_memory(42, 0x20000, 8)
            assert str(e.value).startswith("cipher.img: "), e.value
            if remac or field in ("signature", "signer cert", "signer chain"):
                assert "signature does not verify" in str(e.value), e.value
            else:
                assert "signature does not verify" in str(e.value) or "authentication failed" in str(e.value)
    # the genuine one still reads, pages of the parent included
    ck = criusec.Checkpoint(child.dir, path, policy=policy(pem / "root.pem"))
    assert ck.read_memory(42, 0x20000, 8) == page_of(b"20000")[:8]


def test_stripped_signature_is_an_unsigned_checkpoint(family, rsa_keys, pem, tmp_path):
    """A recipient can drop the signature and MAC the header again: it is
    then an unsigned checkpoint, which only a reader without a trust
    policy reads."""
    _, child, _ = family
    d = tmp_path / "stripped"
    shutil.copytree(child.dir, d, symlinks=True)
    h = dict(child.header, sig_alg=0, signer_certs=[], signature=b"")
    h["mac"] = criusec.header_mac(criusec.prk_of(child.mk, child.ckpt_id), h)
    (d / "cipher.img").write_bytes(criusec.encode_cipher_img(h))
    path = rsa_keys["alice"][1]
    assert pid_of(criusec.Checkpoint(d, path, policy=policy())) == 42
    with pytest.raises(criusec.PolicyError, match=r"cipher.img: unsigned checkpoint refused because signers are "
                       r"trusted from .*root.pem: dump it signed: criu --sign-key"):
        pid_of(criusec.Checkpoint(d, path, policy=policy(pem / "root.pem")))
    # signature bytes without sig_alg, or sig_alg without signature: malformed
    for fields in ({"signature": b"x"}, {"signer_certs": [b"x"]}):
        (d / "cipher.img").write_bytes(criusec.encode_cipher_img(dict(h, **fields)))
        with pytest.raises(criusec.FormatError, match="cipher.img: malformed header"):
            pid_of(criusec.Checkpoint(d, path, policy=policy()))


def cipher_img_with(h, **fields):
    """cipher.img of header h with protobuf fields changed (None: cleared)."""
    ce = pycriu.images.pb.cipher_entry()
    ce.ParseFromString(criusec.encode_cipher_img(h)[12:])
    for k, v in fields.items():
        if v is None:
            ce.ClearField(k)
        elif k == "signer_certs":
            del ce.signer_certs[:]
            ce.signer_certs.extend(v)
        else:
            setattr(ce, k, v)
    m = pycriu.images.magic.by_name
    body = ce.SerializeToString()
    return struct.pack("<iii", m["IMG_COMMON"], m["CIPHER"], len(body)) + body


@pytest.mark.parametrize("fields,msg", [
    ({"sig_alg": 9}, "unsupported signature algorithm 9"),
    ({"created": None}, "without its creation time"),
    ({"manifest_digest": b"short"}, "without a manifest digest"),
    ({"parent_binding": None}, "a parent without its binding"),
    ({"parent_id": None}, "a parent binding without a parent"),
    ({"signer_certs": [b"\x30\x03\x02\x01\x01"]}, "cipher.img: signer certificate is not a DER X.509 certificate"),
    ({"signer_certs": [b"\x30"] * 9}, "too large"),
    ({"signature": b"\x00" * 16385}, "too large"),
    ({"version": 3}, "unsupported header version 3"),
    ({"version": 1}, r"version 1 with format-2 fields: parent_binding, created, manifest_digest, sig_alg, "
                     r"signer_certs, signature"),
])
def test_malformed_format2_headers(fields, msg, family, rsa_keys, tmp_path):
    _, child, _ = family
    d = tmp_path / "m"
    shutil.copytree(child.dir, d, symlinks=True)
    (d / "cipher.img").write_bytes(cipher_img_with(child.header, **fields))
    with pytest.raises(criusec.FormatError, match=msg):
        pid_of(criusec.Checkpoint(d, rsa_keys["alice"][1], policy=policy()))


def test_unsigned_header_without_sig_alg_field(rsa_keys, tmp_path):
    """sig_alg absent on disk reads as 0 (protobuf's default); the MAC covers u32(0) either way."""
    key, path = rsa_keys["alice"]
    syn = Synth(tmp_path / "u", key, [(0x10000, 1, P)])
    (syn.dir / "cipher.img").write_bytes(cipher_img_with(syn.header, sig_alg=None))
    h = criusec.read_cipher_img(syn.dir / "cipher.img")
    assert h["sig_alg"] == 0 and "sig_alg" not in h["v2_fields"]
    assert pid_of(criusec.Checkpoint(syn.dir, path, policy=policy())) == 42


# ---- signer chains and pinned signers (section 10.4) ----

def store(pki, *names):
    s = criusec.TrustStore()
    for n in names:
        s.add_pem(getattr(pki, n).pem if isinstance(n, str) else n.pem)
    return s


def chain(pki, leaf):
    return [c.der for c in pki.chain(leaf)]


def test_trust_store_accepts(pki):
    assert store(pki, "selfsigned").verify([pki.selfsigned.der]) == "pinned"
    # a pinned leaf needs no chain and no CA
    assert store(pki, pki.leaf["rsa"]).verify([pki.leaf["rsa"].der]) == "pinned"
    for kt in KEY_TYPES:
        assert store(pki, "root").verify(chain(pki, pki.leaf[kt])) == "CA CN=criusec test root"
    # the intermediate as the anchor, with or without itself in the chain
    assert store(pki, "inter").verify([pki.leaf["p256"].der]) == "CA CN=criusec test intermediate"
    assert store(pki, "inter").verify(chain(pki, pki.leaf["p256"])) == "CA CN=criusec test intermediate"
    # an Ed25519-signed certificate; extra certificates after the anchor's are not used
    assert store(pki, "edroot").verify([pki.edleaf.der]) == "CA CN=criusec ed25519 root"
    assert store(pki, "root").verify(chain(pki, pki.leaf["p256"]) + [pki.foreign.der]) == "CA CN=criusec test root"
    # no keyUsage: any use
    assert store(pki, "root").verify(chain(pki, pki.nousage)).startswith("CA ")


@pytest.mark.parametrize("case,trusted,msg", [
    ("foreign", ("root",), "signer CN=signer-foreign is not signed by a trusted CA"),
    ("unknown", ("selfsigned",), "unknown signer CN=signer-p256 .*no CA"),
    ("missing intermediate", ("root",), "signer CN=signer-p256 is not signed by a trusted CA"),
    ("expired", ("root",), "signer certificate CN=signer-expired has expired"),
    ("expired pinned", ("expired",), "signer certificate CN=signer-expired has expired"),
    ("future", ("root",), "signer certificate CN=signer-future is not yet valid"),
    ("encipher only", ("root",), "CN=signer-encipher-only is not allowed to sign"),
    ("encipher only pinned", ("encipher",), "CN=signer-encipher-only is not allowed to sign"),
    ("issuer not a CA", ("root",), "issuer CN=intermediate-not-ca is not a CA"),
    ("issuer without keyCertSign", ("root",), "issuer CN=intermediate-no-certsign is not allowed to sign certif"),
    ("expired issuer", ("root",), "issuer CN=intermediate-expired has expired"),
    ("path length", ("root",), "issuer CN=criusec test intermediate allows 0 intermediate CAs under it, the "
                               "chain has 1"),
    ("wrong order", ("root",), "is not issued by the next certificate"),
])
def test_trust_store_refuses(case, trusted, msg, pki):
    leaf = {"foreign": pki.foreign, "unknown": pki.leaf["p256"], "expired": pki.expired,
            "expired pinned": pki.expired, "future": pki.future, "encipher only": pki.encipher,
            "encipher only pinned": pki.encipher, "issuer not a CA": pki.under_notca,
            "issuer without keyCertSign": pki.under_nocertsign, "expired issuer": pki.under_old,
            "path length": pki.under_sub}.get(case)
    if case == "missing intermediate":
        ch = [pki.leaf["p256"].der]
    elif case == "wrong order":
        ch = [pki.leaf["p256"].der, pki.root.der, pki.inter.der]
    else:
        ch = chain(pki, leaf)
    with pytest.raises(criusec.UntrustedSignerError, match=msg):
        store(pki, *trusted).verify(ch)


def test_trust_store_validity_is_checked_at_now(pki):
    s = store(pki, "root")
    ch = chain(pki, pki.leaf["p256"])
    t = criusec._ts(pki.leaf["p256"].cert.not_valid_after)
    assert s.verify(ch, now=t).startswith("CA ")
    with pytest.raises(criusec.UntrustedSignerError, match="has expired"):
        s.verify(ch, now=t + 1)


def test_rsa_pss_signed_certificates_are_not_supported(pki, tmp_path):
    leaf = pki_util.openssl_pss_signed(tmp_path, pki.root)
    if leaf is None:
        pytest.skip("openssl is needed to make an RSA-PSS-signed certificate")
    with pytest.raises(criusec.UntrustedSignerError, match="signer-pss-signed is signed with RSA-PSS, which is not "
                       "supported by pycriu"):
        store(pki, "root").verify([leaf.der])
    assert store(pki, leaf).verify([leaf.der]) == "pinned"  # pinned: no certificate signature to check


def test_trust_files(pki, pem, tmp_path):
    both = tmp_path / "both.pem"
    both.write_bytes(pki.selfsigned.pem + b"junk between\n" + pki.root.pem)
    s = criusec.TrustStore([both])
    assert s.subjects() == ["CN=signer-selfsigned", "CN=criusec test root"] and s.paths == [str(both)]
    with pytest.raises(criusec.CriusecError, match="trust file .*none.pem: No such file or directory"):
        criusec.TrustStore([tmp_path / "none.pem"])
    (tmp_path / "empty.pem").write_text("")
    with pytest.raises(criusec.CriusecError, match="trust file .*empty.pem holds no PEM certificate"):
        criusec.Policy(trust=str(tmp_path / "empty.pem"))


# ---- the restore policy (section 10.8) ----

@pytest.fixture
def etc_criu():
    """/etc/criu in the tests' private mount namespace (conftest.py): what is
    made there never reaches the host.  Emptied afterwards."""
    d = pathlib.Path("/etc/criu")
    with open("/proc/self/mountinfo") as f:
        private = any(line.split()[4] == str(d) and " - tmpfs " in line for line in f)
    if not private:
        pytest.skip("/etc/criu is not the tests' private tmpfs (needs root)")
    assert not any(d.iterdir()), "/etc/criu is not empty"
    yield d
    for p in d.iterdir():
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()


@pytest.fixture(scope="module")
def kinds(pki, rsa_keys, tmp_path_factory):
    """One checkpoint of each row of the policy table."""
    d = tmp_path_factory.mktemp("kinds")
    key = rsa_keys["alice"][0]
    out = {}
    (d / "plain").mkdir()
    (d / "plain" / "pstree.img").write_bytes(image("PSTREE", [{"pid": 42, "ppid": 0, "pgid": 42, "sid": 42}]))
    out["plain"] = d / "plain"
    out["format 1"] = Synth(d / "v1", key, [(0x10000, 1, P)], version=1).dir
    out["unsigned"] = Synth(d / "unsigned", key, [(0x10000, 1, P)]).dir
    bad = Synth(d / "bad", key, [(0x10000, 1, P)], signer=signer(pki, pki.leaf["p256"]))
    bad.seal(None)  # a header the recipient MAC'd ...
    bad.header.update(sig_alg=3, signer_certs=[pki.leaf["p256"].der], signature=b"\x30" * 70)
    bad.header["mac"] = criusec.header_mac(criusec.prk_of(bad.mk, bad.ckpt_id), bad.header)
    bad.write_header()  # ... with a signature that does not verify
    out["bad signature"] = bad.dir
    out["untrusted"] = Synth(d / "untrusted", key, [(0x10000, 1, P)], signer=signer(pki, pki.foreign)).dir
    out["trusted"] = Synth(d / "trusted", key, [(0x10000, 1, P)], signer=signer(pki, pki.leaf["rsa"])).dir
    return out


# What each row gives under each column: None (read) or a regular expression of the refusal.
NOT_ENCRYPTED = r"pstree.img: not an encrypted checkpoint \(no cipher.img\), refused because %s: dump it with --encrypt"
POLICY = {
    "no trust, not required": {"plain": None, "format 1": None, "unsigned": None, "bad signature": "does not verify",
                               "untrusted": None, "trusted": None},
    "trust configured": {
        "plain": NOT_ENCRYPTED % "signers are trusted from .*",
        "format 1": r"cipher.img: format-1 checkpoint \(no signature\) refused because signers are trusted from",
        "unsigned": "cipher.img: unsigned checkpoint refused because signers are trusted from .*: dump it signed",
        "bad signature": "cipher.img: the signature does not verify",
        "untrusted": r"cipher.img: untrusted signer: signer CN=signer-foreign is not signed by a trusted CA .*; "
                     r"to trust it, pass --trust PEM \(pycriu: trust=\) or put it in /etc/criu/trusted-signers.pem",
        "trusted": None},
    "required, no trust": {
        "plain": NOT_ENCRYPTED % "/etc/criu/encryption-required exists",
        "format 1": "cipher.img: /etc/criu/encryption-required requires trusted signatures, but no signer is trusted:"
                    r" pass --trust PEM \(pycriu: trust=\) or put it in /etc/criu/trusted-signers.pem",
        "unsigned": "requires trusted signatures, but no signer is trusted",
        "bad signature": "does not verify",
        "untrusted": "requires trusted signatures, but no signer is trusted",
        "trusted": "requires trusted signatures, but no signer is trusted"},
}


def check_policy_table(kinds, path, make_policy, column):
    for kind, want in POLICY[column].items():
        ck = criusec.Checkpoint(kinds[kind], path, policy=make_policy())
        if want is None:
            assert pid_of(ck) == 42, (column, kind)
            if kind == "untrusted":
                assert ck.report["trusted"] is None and ck.report["signer"] == "CN=signer-foreign"
        else:
            with pytest.raises(criusec.CriusecError, match=want):
                pid_of(ck)


def test_policy_without_trust(kinds, rsa_keys, etc_criu):
    check_policy_table(kinds, rsa_keys["alice"][1], criusec.Policy, "no trust, not required")


def test_policy_with_trust_files(kinds, rsa_keys, pem, etc_criu):
    check_policy_table(kinds, rsa_keys["alice"][1], lambda: criusec.Policy(trust=[str(pem / "root.pem")]),
                       "trust configured")
    # trust from the default file, with nothing given
    shutil.copy(pem / "root.pem", etc_criu / "trusted-signers.pem")
    assert criusec.Policy().store.paths == ["/etc/criu/trusted-signers.pem"]
    check_policy_table(kinds, rsa_keys["alice"][1], criusec.Policy, "trust configured")
    # given files win over the default one
    assert criusec.Policy(trust=str(pem / "stranger.pem")).store.paths == [str(pem / "stranger.pem")]
    # with the marker too, trust decides
    (etc_criu / "encryption-required").touch()
    check_policy_table(kinds, rsa_keys["alice"][1], criusec.Policy, "trust configured")


def test_policy_marker_without_trust(kinds, rsa_keys, etc_criu):
    (etc_criu / "encryption-required").touch()
    check_policy_table(kinds, rsa_keys["alice"][1], criusec.Policy, "required, no trust")
    # a dangling marker link, or a marker directory, counts
    for make in (lambda p: p.symlink_to("/nonexistent"), lambda p: p.mkdir()):
        (etc_criu / "encryption-required").unlink()
        make(etc_criu / "encryption-required")
        assert criusec.Policy().required
        with pytest.raises(criusec.PolicyError):
            pid_of(criusec.Checkpoint(kinds["plain"], None))
        (etc_criu / "encryption-required").rmdir() if (etc_criu / "encryption-required").is_dir() and \
            not (etc_criu / "encryption-required").is_symlink() else None
        if not os.path.lexists(etc_criu / "encryption-required"):
            (etc_criu / "encryption-required").touch()
    # a trust file that cannot be read is an error, not "no trust"
    (etc_criu / "trusted-signers.pem").symlink_to("/nonexistent")
    with pytest.raises(criusec.CriusecError, match="trust file /etc/criu/trusted-signers.pem: No such file"):
        criusec.Policy()


def test_policy_refuses_before_reading_images(kinds, rsa_keys, pem):
    for kind in ("format 1", "unsigned", "untrusted"):
        with opened_files() as files:
            with pytest.raises(criusec.PolicyError):
                criusec.Checkpoint(kinds[kind], rsa_keys["alice"][1], trust=str(pem / "root.pem")).verify()
        assert opened_under(files, kinds[kind]) == ["cipher.img"], kind


def test_max_age(pki, rsa_keys, tmp_path):
    key, path = rsa_keys["alice"]
    t = 1767225600
    syn = Synth(tmp_path / "aged", key, [(0x10000, 1, P)], signer=signer(pki, pki.leaf["p256"]), created=t)
    now = criusec._ts(pki_util.NOW)

    def read(max_age, at):
        return pid_of(criusec.Checkpoint(syn.dir, path, policy=criusec.Policy(trust=criusec.TrustStore(),
                                                                              required=False, max_age=max_age,
                                                                              now=at)))

    syn.seal(signer(pki, pki.leaf["p256"]), created=now - 100)
    assert read(100, now) == 42
    with pytest.raises(criusec.PolicyError, match=r"signed 101 s ago \(.*\), more than the maximum age of 100 s"):
        read(100, now + 1)
    syn.seal(signer(pki, pki.leaf["p256"]), created=now + 300)
    assert read(100, now) == 42
    syn.seal(signer(pki, pki.leaf["p256"]), created=now + 301)
    with pytest.raises(criusec.PolicyError, match="creation time is 301 s in the future"):
        read(100, now)
    syn.seal(None, created=now)
    with pytest.raises(criusec.PolicyError, match="a maximum age needs a signed creation time"):
        read(100, now)
    assert read(None, now) == 42


# ---- the manifest (section 10.6) ----

def test_manifest_sizes_and_digests(family, rsa_keys, tmp_path):
    _, child, _ = family
    path = rsa_keys["alice"][1]

    def damaged(tag, how):
        d = tmp_path / tag
        shutil.copytree(child.dir, d, symlinks=True)
        how(d)
        return criusec.Checkpoint(d, path, policy=policy())

    # a byte appended: refused by its size, before it is read
    ck = damaged("longer", lambda d: (d / "pstree.img").write_bytes((d / "pstree.img").read_bytes() + b"\0"))
    with opened_files() as files:
        with pytest.raises(criusec.FormatError, match=r"pstree.img: \d+ bytes, but the manifest records \d+ "
                           r"\(truncated, extended or replaced\)"):
            ck.load("pstree.img")
    assert "pstree.img" in opened_under(files, ck.dir)  # opened, for fstat() only
    # another plaintext of the same size, sealed with the checkpoint's key (a recipient)
    pt = image("PSTREE", [{"pid": 43, "ppid": 0, "pgid": 42, "sid": 42}])
    ck = damaged("other", lambda d: (d / "pstree.img").write_bytes(
        criusec.stream_seal(child.mk, child.ckpt_id, 1, 65536, "pstree.img", "pstree.img", pt)))
    with pytest.raises(criusec.FormatError, match="pstree.img: its plaintext is not the one the manifest records"):
        ck.load("pstree.img")
    with pytest.raises(criusec.FormatError, match="pstree.img: its plaintext"):
        ck.verify()
    # a manifest the recipient made: not the one cipher.img was sealed with
    mf = manifest_bytes([("pstree.img", "pstree.img", 0, b"")])
    ck = damaged("manifest", lambda d: (d / "cipher-manifest.img").write_bytes(criusec.stream_seal(
        child.mk, child.ckpt_id, 1, 65536, "cipher-manifest.img", "cipher-manifest.img", mf)))
    with pytest.raises(criusec.FormatError, match="cipher-manifest.img: not the manifest this checkpoint was "
                       "sealed with"):
        ck.load("pstree.img")


def test_manifest_names_are_plain_file_names(rsa_keys, tmp_path):
    """An unsigned checkpoint made by a recipient, whose manifest lists other paths."""
    key, path = rsa_keys["alice"]
    # Paths, and plain names that are not names of the image's kind (issue 11.2).
    for bad in ("../pstree.img", "/etc/shadow", "..", "a/b", "mm-1.img", "pstree.img.bak"):
        syn = Synth(tmp_path / bad.replace("/", "_").replace(".", "d"), key, [(0x10000, 1, P)])
        mf = manifest_bytes([("pstree.img", bad, 10, bytes(32))])
        syn.stream("cipher-manifest.img", "cipher-manifest.img", mf, listed=False)
        syn.seal(None, manifest_digest=hashlib.sha256(mf).digest())
        with pytest.raises(criusec.FormatError, match="cipher-manifest.img: .* is not an image name of the kind"):
            criusec.Checkpoint(syn.dir, path, policy=policy()).verify()
    # an image that is a symbolic link, or a FIFO, is not opened as one
    syn = Synth(tmp_path / "links", key, [(0x10000, 1, P)])
    os.rename(syn.dir / "pstree.img", tmp_path / "elsewhere.img")
    os.symlink(tmp_path / "elsewhere.img", syn.dir / "pstree.img")
    with pytest.raises(criusec.FormatError, match="pstree.img: a symbolic link, not an image file"):
        criusec.Checkpoint(syn.dir, path, policy=policy()).load("pstree.img")
    os.unlink(syn.dir / "pstree.img")
    os.mkfifo(syn.dir / "pstree.img")
    with pytest.raises(criusec.FormatError, match="pstree.img: not a regular file"):
        criusec.Checkpoint(syn.dir, path, policy=policy()).load("pstree.img")


def test_unsealed_manifest_entries_are_checked_by_their_stream(rsa_keys, tmp_path):
    """Size 0 and no digest: an image a page server sealed under a grant."""
    key, path = rsa_keys["alice"]
    syn = Synth(tmp_path / "ps", key, [(0x10000, 1, P)])
    entries = [(k, n, 0 if n.startswith("pagemap-") else s, b"" if n.startswith("pagemap-") else
                hashlib.sha256(pt).digest()) for k, n, s, pt in syn.manifest]
    mf = manifest_bytes(entries)
    syn.stream("cipher-manifest.img", "cipher-manifest.img", mf, listed=False)
    syn.seal(None, manifest_digest=hashlib.sha256(mf).digest())
    ck = criusec.Checkpoint(syn.dir, path, policy=policy())
    assert ck.read_memory(42, 0x10000, 4) == page_of(b"10000")[:4]
    flip_at = (syn.dir / "pagemap-42.img")
    b = bytearray(flip_at.read_bytes())
    b[40] ^= 1
    flip_at.write_bytes(bytes(b))
    with pytest.raises(criusec.FormatError, match="pagemap-42.img: chunk 0 failed authentication"):
        criusec.Checkpoint(syn.dir, path, policy=policy()).verify()


# ---- the parent binding (section 10.5) ----

def parent_refused(child_dir, path, msg, pol=None):
    """Reading a page that is in the parent is refused with msg, and no
    image of the parent (at most its cipher.img) is opened."""
    parent = os.path.realpath(os.path.join(child_dir, "parent"))
    with opened_files() as files:
        with pytest.raises(criusec.CriusecError, match=msg):
            criusec.Checkpoint(child_dir, path, policy=pol or policy()).read_memory(42, 0x20000, 8)
    assert set(opened_under(files, parent)) <= {"cipher.img"}, opened_under(files, parent)
    return opened_under(files, parent)


def test_genuine_child_reads_its_parent(family, rsa_keys, pem):
    _, child, _ = family
    for trust in (None, pem / "root.pem"):
        ck = criusec.Checkpoint(child.dir, rsa_keys["alice"][1], policy=policy(trust))
        assert ck.read_memory(42, 0x10000, 8) == page_of(b"10000")[:8]
        assert ck.read_memory(42, 0x20000, 8) == page_of(b"20000")[:8]


def test_plain_child_never_opens_an_encrypted_parent(family, rsa_keys, tmp_path):
    """Made with no key at all: pages marked as in the parent."""
    parent, _, _ = family
    d = tmp_path / "plain-child"
    d.mkdir()
    (d / "pstree.img").write_bytes(image("PSTREE", [{"pid": 42, "ppid": 0, "pgid": 42, "sid": 42}]))
    ck = criusec.Checkpoint(d, policy=policy())
    ck.write_pages("pagemap-42.img", [(0x10000, 1, P), (0x20000, 1, criusec.PE_PARENT)], {0x10000: bytes(4096)})
    assert not ck.encrypted and (d / "pages-1.img").stat().st_size == 4096
    os.symlink(parent.dir, d / "parent")
    assert parent_refused(d, rsa_keys["alice"][1], "an encrypted parent is never opened for a plain checkpoint") \
        == []
    r = crit("x", d, "mems", "--pages", "20000+8", "--tls-key", rsa_keys["alice"][1], check=False)
    refusal(r, "parent", "an encrypted parent is never opened for a plain checkpoint")


def test_format1_child_never_opens_an_encrypted_parent(family, rsa_keys, tmp_path):
    parent, _, _ = family
    key, path = rsa_keys["alice"]
    child = Synth(tmp_path / "v1child", key, [(0x10000, 1, P), (0x20000, 1, criusec.PE_PARENT)], parent=parent,
                  version=1)
    os.symlink(parent.dir, child.dir / "parent")
    assert parent_refused(child.dir, path, "not opened for a format-1 checkpoint, which has no parent binding") == []


def test_forged_child_is_refused(family, rsa_keys, pki, tmp_path):
    """A child made with only the recipient's public key (and the parent's
    id, which cipher.img shows), signed by its maker or not."""
    parent, _, _ = family
    key, path = rsa_keys["alice"]
    for tag, sig in (("unsigned", None), ("signed", signer(pki, pki.foreign))):
        forged = Synth(tmp_path / tag, key, [(0x10000, 1, P), (0x20000, 1, criusec.PE_PARENT)],
                       parent=(parent.ckpt_id, os.urandom(32)), signer=sig)
        os.symlink(parent.dir, forged.dir / "parent")
        assert parent_refused(forged.dir, path, "the parent binding does not verify") == ["cipher.img"]


def test_forged_parent_is_refused(family, rsa_keys, tmp_path):
    """A parent made with only the public key, under the genuine parent's id."""
    parent, child, _ = family
    key, path = rsa_keys["alice"]
    forged = Synth(tmp_path / "forged-parent", key, [(0x20000, 1, P)], ckpt_id=parent.ckpt_id)
    d = tmp_path / "child"
    shutil.copytree(child.dir, d, symlinks=False, ignore=shutil.ignore_patterns("parent"))
    os.symlink(forged.dir, d / "parent")
    assert parent_refused(d, path, "the parent binding does not verify") == ["cipher.img"]
    r = crit("x", d, "mems", "--pages", "20000+8", "--tls-key", path, check=False)
    refusal(r, "the parent binding does not verify")


def test_child_repointed_to_another_checkpoint_is_refused(family, rsa_keys, pem, tmp_path):
    _, child, other = family
    path = rsa_keys["alice"][1]
    d = tmp_path / "child"
    shutil.copytree(child.dir, d, symlinks=False, ignore=shutil.ignore_patterns("parent"))
    os.symlink(other.dir, d / "parent")
    for trust in (None, pem / "root.pem"):
        assert parent_refused(d, path, "not the checkpoint these images were dumped against", policy(trust)) == \
            ["cipher.img"]


def test_parent_is_held_to_the_policy(pki, rsa_keys, pem, tmp_path):
    """A trusted child of an untrusted (or unsigned) parent is refused
    under a trust policy, naming the parent."""
    key, path = rsa_keys["alice"]
    for tag, sig in (("untrusted", signer(pki, pki.foreign)), ("unsigned", None)):
        parent = Synth(tmp_path / tag / "parent", key, [(0x20000, 1, P)], signer=sig)
        child = Synth(tmp_path / tag / "child", key, [(0x10000, 1, P), (0x20000, 1, criusec.PE_PARENT)],
                      parent=parent, signer=signer(pki, pki.leaf["p384"]))
        os.symlink("../parent", child.dir / "parent")
        assert criusec.Checkpoint(child.dir, path, policy=policy()).read_memory(42, 0x20000, 4) == \
            page_of(b"20000")[:4]
        assert parent_refused(child.dir, path, r"/parent: cipher.img: (untrusted|unsigned)",
                              policy(pem / "root.pem")) == ["cipher.img"]


# ---- editing and sealing again ----

def test_edit_and_reseal(family, pki, pem, rsa_keys, tmp_path):
    _, child, _ = family
    path = rsa_keys["alice"][1]
    d = tmp_path / "edit"
    shutil.copytree(child.dir, d, symlinks=True)
    ck = criusec.Checkpoint(d, path, policy=policy(pem / "root.pem"))
    img = ck.load("pstree.img")
    img["entries"][0]["sid"] = 7
    ck.write_image("pstree.img", pycriu.images.dumps(img))
    # not sealed yet: the manifest no longer matches the image
    with pytest.raises(criusec.FormatError, match="pstree.img"):
        criusec.Checkpoint(d, path, policy=policy()).verify()
    h = ck.reseal(signer(pki, pki.leaf["p384"]))
    assert h["sig_alg"] == 4 and h["parent_id"] == child.header["parent_id"] and h["parent_binding"] == \
        child.header["parent_binding"]
    ck2 = criusec.Checkpoint(d, path, policy=policy(pem / "root.pem"))
    assert ck2.load("pstree.img")["entries"][0]["sid"] == 7
    assert ck2.read_memory(42, 0x20000, 4) == page_of(b"20000")[:4]  # still bound to its parent
    assert ck2.report["signer"] == "CN=signer-p384" and ck.load("pstree.img")["entries"][0]["sid"] == 7
    # unsigned after an edit: read without trust, refused with it
    ck.reseal()
    assert pid_of(criusec.Checkpoint(d, path, policy=policy())) == 42
    with pytest.raises(criusec.PolicyError, match="unsigned checkpoint refused"):
        pid_of(criusec.Checkpoint(d, path, policy=policy(pem / "root.pem")))
    # new recipients: the same key wrapped for them
    ck = criusec.Checkpoint(d, path, policy=policy())
    ck.reseal(recipients=[rsa_keys["mallory"][0].public_key()])
    assert pid_of(criusec.Checkpoint(d, rsa_keys["mallory"][1], policy=policy())) == 42
    with pytest.raises(criusec.PrivateKeyError):
        pid_of(criusec.Checkpoint(d, path, policy=policy()))


def test_format1_checkpoint_resealed_as_format2(family, pki, pem, rsa_keys, tmp_path):
    parent, _, _ = family
    key, path = rsa_keys["alice"]
    v1 = Synth(tmp_path / "v1", key, [(0x10000, 2, P), (0x20000, 1, criusec.PE_PARENT)], parent=parent, version=1)
    os.symlink(parent.dir, v1.dir / "parent")
    ck = criusec.Checkpoint(v1.dir, path, policy=policy())
    with pytest.raises(criusec.CriusecError, match="a format-1 child has no parent binding: give its parent"):
        ck.reseal()
    ck.reseal(signer(pki, pki.leaf["ed25519"]), parent=criusec.Checkpoint(parent.dir, path, policy=policy()))
    h = criusec.read_cipher_img(v1.dir / "cipher.img")
    assert h["version"] == 2 and h["parent_id"] == parent.ckpt_id
    ck = criusec.Checkpoint(v1.dir, path, policy=policy(pem / "root.pem"))
    assert ck.verify() == 4  # pagetags, pagemap, pstree, core
    assert ck.read_memory(42, 0x11000, 4) + ck.read_memory(42, 0x20000, 4) == \
        page_of(b"11000")[:4] + page_of(b"20000")[:4]
    entries = criusec.decode_manifest(ck._open_stream_file("cipher-manifest.img", "cipher-manifest.img"))
    for name, kind, size, digest in entries:
        assert size == os.path.getsize(v1.dir / name) and digest == hashlib.sha256(ck.read(name)).digest()


def test_create_and_write_pages(pki, rsa_keys, pem, tmp_path):
    """A checkpoint made from scratch; pages rewritten under a new page image id."""
    key, path = rsa_keys["alice"]
    ck = criusec.Checkpoint.create(tmp_path / "new", [key.public_key()], aead=2)
    ck.write_image("pstree.img", image("PSTREE", [{"pid": 42, "ppid": 0, "pgid": 42, "sid": 42}]), "pstree.img")
    ck.write_pages("pagemap-42.img", [(0x10000, 2, P)], {0x10000: page_of(b"a"), 0x11000: page_of(b"b")},
                   "pagemap-%lu.img")
    ck.reseal(signer(pki, pki.leaf["rsa"]))
    r = criusec.Checkpoint(tmp_path / "new", path, policy=policy(pem / "root.pem"))
    assert r.read_memory(42, 0x10ffc, 8) == page_of(b"a")[-4:] + page_of(b"b")[:4]
    # new contents and layout: pages-1.img is replaced by pages-2.img
    r.write_pages("pagemap-42.img", [(0x10000, 1, P), (0x30000, 1, P)],
                  {0x10000: page_of(b"c"), 0x30000: page_of(b"d")})
    r.reseal(signer(pki, pki.leaf["rsa"]))
    assert sorted(p.name for p in (tmp_path / "new").iterdir()) == \
        ["cipher-manifest.img", "cipher.img", "pagemap-42.img", "pages-2.img", "pagetags-2.img", "pstree.img"]
    r = criusec.Checkpoint(tmp_path / "new", path, policy=policy(pem / "root.pem"))
    assert dict(r.pages("pagemap-42.img")) == {0x10000: page_of(b"c"), 0x30000: page_of(b"d")}
    assert criusec.read_cipher_img(tmp_path / "new" / "cipher.img")["aead"] == 2


# ---- crit ----

def test_crit_info_and_x_ps_show_the_header(family, rsa_keys, pem):
    _, child, _ = family
    path = rsa_keys["alice"][1]
    info = json.loads(crit("info", child.dir, "--tls-key", path, "--trust", pem / "root.pem").stdout)
    fprs = [criusec.fingerprint(k).hex() for k in child.pubs]
    assert info == {
        "encrypted": True, "format": 2, "ckpt_id": child.ckpt_id.hex(), "aead": "aes-256-gcm", "chunk_size": 65536,
        "compress": "none", "created": child.header["created"], "created_utc": criusec._utc(child.header["created"]),
        "recipients": [{"fingerprint": "SHA256:" + fprs[0], "key": path},
                       {"fingerprint": "SHA256:" + fprs[1], "key": None}],
        "parent_id": child.header["parent_id"].hex(), "signature": "verified", "sig_alg": "ed25519",
        "signer": "CN=signer-ed25519", "chain": ["CN=signer-ed25519", "CN=criusec test intermediate"],
        "trusted": "CA CN=criusec test root", "trust": None, "mac": "verified", "refused": None}
    # an untrusted signer is reported, not refused, by info
    info = json.loads(crit("info", child.dir, "--tls-key", path, "--trust", pem / "stranger.pem").stdout)
    assert info["trusted"] is None and "not signed by a trusted CA" in info["trust"]
    assert "untrusted signer" in info["refused"] and info["mac"] == "not checked (refused)"
    out = crit("x", child.dir, "ps", "--tls-key", path, "--trust", pem / "root.pem").stdout.splitlines()
    assert out[0] == "checkpoint  %s (criusec format 2, aes-256-gcm)" % child.ckpt_id.hex()
    assert "recipient   SHA256:%s (key %s)" % (fprs[0], path) in out
    assert "parent      %s" % child.header["parent_id"].hex() in out
    assert "signer      CN=signer-ed25519 (ed25519)" in out and "  issued by CN=criusec test intermediate" in out
    assert "signature   verified" in out and "trusted     yes (CA CN=criusec test root)" in out
    assert out[out.index("") + 1].split() == ["PID", "PGID", "SID", "COMM"]
    out = crit("x", child.dir, "ps", "--tls-key", path).stdout.splitlines()
    assert "trusted     not checked: no trust configured (--trust PEM)" in out


def test_crit_trust_refusals(kinds, rsa_keys, pem, tmp_path):
    path = rsa_keys["alice"][1]
    root = pem / "root.pem"
    refusal(crit("x", kinds["untrusted"], "ps", "--tls-key", path, "--trust", root, check=False),
            "cipher.img: untrusted signer", "--trust PEM")
    refusal(crit("show", kinds["unsigned"] / "pstree.img", "--tls-key", path, "--trust", root, check=False),
            "cipher.img: unsigned checkpoint refused", "sign-key")
    refusal(crit("show", kinds["format 1"] / "pstree.img", "--tls-key", path, "--trust", root, check=False),
            "format-1 checkpoint")
    refusal(crit("decode", "-i", kinds["plain"] / "pstree.img", "--trust", root, check=False),
            "pstree.img: not an encrypted checkpoint", "--encrypt")
    with open(kinds["plain"] / "pstree.img", "rb") as f:
        refusal(crit("decode", "--trust", root, stdin=f, check=False), "standard input: not an encrypted checkpoint")
    refusal(crit("x", kinds["bad signature"], "ps", "--tls-key", path, check=False), "signature does not verify")
    refusal(crit("show", kinds["trusted"] / "pstree.img", "--trust", tmp_path / "none.pem", check=False),
            "trust file", "none.pem: No such file")
    assert crit("show", kinds["trusted"] / "pstree.img", "--tls-key", path, "--trust", root).returncode == 0
    # stats-dump and the like are refused too: nothing of the checkpoint is read
    (kinds["untrusted"] / "stats-dump").write_bytes(b"")
    refusal(crit("show", kinds["untrusted"] / "stats-dump", "--trust", root, check=False), "untrusted signer")
    (kinds["untrusted"] / "stats-dump").unlink()


def test_crit_encode_seals_the_checkpoint_again(family, pki, pem, rsa_keys, tmp_path):
    _, child, _ = family
    path = rsa_keys["alice"][1]
    d = tmp_path / "enc"
    shutil.copytree(child.dir, d, symlinks=True)
    img = json.loads(crit("decode", "-i", d / "pstree.img", "--tls-key", path).stdout)
    img["entries"][0]["sid"] = 9
    (tmp_path / "ps.json").write_text(json.dumps(img))
    kp, cp = pki.leaf["p256"].write(tmp_path, [pki.inter])
    r = crit("encode", "-i", tmp_path / "ps.json", "-o", d / "pstree.img", "--tls-key", path, "--sign-key", kp,
             "--sign-cert", cp)
    assert r.stderr == ""
    r = crit("show", d / "pstree.img", "--tls-key", path, "--trust", pem / "root.pem")
    assert json.loads(r.stdout)["entries"][0]["sid"] == 9
    info = json.loads(crit("info", d, "--tls-key", path, "--trust", pem / "root.pem").stdout)
    assert info["signer"] == "CN=signer-p256" and info["trusted"] == "CA CN=criusec test root"
    # without a signing key: unsigned, said so; read without trust only
    r = crit("encode", "-i", tmp_path / "ps.json", "-o", d / "pstree.img", "--tls-key", path)
    assert r.stderr.startswith("crit: note: ") and "is unsigned now" in r.stderr
    refusal(crit("show", d / "pstree.img", "--tls-key", path, "--trust", pem / "root.pem", check=False),
            "unsigned checkpoint refused")
    assert json.loads(crit("show", d / "pstree.img", "--tls-key", path).stdout)["entries"][0]["sid"] == 9
    # the parent is still bound
    assert crit("x", d, "mems", "--pages", "20000+4", "--tls-key", path).returncode == 0
    refusal(crit("encode", "-i", tmp_path / "ps.json", "-o", d / "pstree.img", "--tls-key", path, "--sign-key", kp,
                 check=False), "--sign-key and --sign-cert go together")
    refusal(crit("encode", "-i", tmp_path / "ps.json", "-o", tmp_path / "x.img", "--sign-key", kp, "--sign-cert",
                 cp, check=False), "go with -o into an encrypted checkpoint")


def test_crit_writes_no_file_through_a_planted_link(family, rsa_keys, tmp_path):
    """Issue 11.6: nothing crit writes follows a link planted in a writable
    image directory; decrypted output is created 0600."""
    _, child, _ = family
    path = rsa_keys["alice"][1]
    d = tmp_path / "ck"
    shutil.copytree(child.dir, d, symlinks=True)
    victim = tmp_path / "victim"
    victim.write_text("untouched")
    img = json.loads(crit("decode", "-i", d / "pstree.img", "--tls-key", path).stdout)
    (tmp_path / "ps.json").write_text(json.dumps(img))
    # the temporary name older crit used, and the output name itself
    os.symlink(victim, d / ".pstree.img.crit-tmp")
    crit("encode", "-i", tmp_path / "ps.json", "-o", d / "pstree.img", "--tls-key", path)
    assert victim.read_text() == "untouched" and os.path.islink(d / ".pstree.img.crit-tmp")
    assert not [p for p in os.listdir(d) if p.endswith(".crit-tmp") and p != ".pstree.img.crit-tmp"]
    out = tmp_path / "out.json"
    os.symlink(victim, out)
    os.umask(0o022)
    crit("decode", "-i", d / "pstree.img", "-o", out, "--tls-key", path)
    assert victim.read_text() == "untouched" and not out.is_symlink()
    assert json.loads(out.read_text()) == img and out.stat().st_mode & 0o777 == 0o600
    assert (d / "pstree.img").stat().st_mode & 0o777 == 0o600


def test_crit_missing_files_are_one_line(tmp_path):
    refusal(crit("show", tmp_path / "nope.img", check=False), "nope.img: No such file or directory")
    refusal(crit("decode", "-i", tmp_path / "nope.img", check=False), "nope.img: No such file or directory")
    refusal(crit("x", tmp_path / "nodir", "ps", check=False), "pstree.img: No such file or directory")
    refusal(crit("encode", "-i", tmp_path / "nope.json", check=False), "nope.json: No such file or directory")
