#!/usr/bin/python3
"""Cross-check of the C++ engine against an independent implementation of
the criusec formats (1 and 2), written from Documentation/criusec-format.md with
python3-cryptography (OpenSSL): pycriu's criusec package, lib/pycriu/criusec/.

    criusec_ref.py --helper PATH/criusec-format-helper

exits 0 on success, 77 when python3-cryptography is missing (CTest: skipped).
"""
import argparse
import hashlib
import importlib.util
import os
import subprocess
import sys
import tempfile

try:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding, rsa
except ImportError:
    print("python3-cryptography missing: skipped")
    sys.exit(77)


def load_reference():
    """The reader itself is pycriu's criusec package (lib/pycriu/criusec/,
    at the same place in the repository and in CRIU's tree): one
    implementation, used by crit and checked against the engine here.  It
    is loaded by path, as a package of its own, so neither pycriu nor
    protobuf need be importable (what needs them, cipher.img's and the
    manifest's protobuf encoding, is not used here)."""
    pkg = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "lib", "pycriu", "criusec")
    spec = importlib.util.spec_from_file_location("criusec", os.path.join(pkg, "__init__.py"),
                                                  submodule_search_locations=[pkg])
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # for the package's relative imports of its modules
    spec.loader.exec_module(mod)
    return mod


ref = load_reference()
FormatError = ref.CriusecError
prk_of, derive, stream_key = ref.prk_of, ref.derive, ref.stream_key
canonical, header_mac, fingerprint = ref.canonical, ref.header_mac, ref.fingerprint
canonical2, parent_binding, verify_signature = ref.canonical2, ref.parent_binding, ref.verify_signature
import_header, stream_seal, stream_open = ref.import_header, ref.stream_seal, ref.stream_open
new_header, seal_header = ref.new_header, ref.seal_header


# ---- the page cipher ----

def pages_seal(prk, name, vaddr, index, pt):
    pc, ct, tags = ref.PageCipher(prk, name), [], []
    for k in range(len(pt) // 4096):
        c, t = pc.seal(vaddr + k * 4096, index + k, pt[k * 4096:(k + 1) * 4096])
        ct.append(c)
        tags.append(t)
    return b"".join(ct), b"".join(tags)


def pages_open(prk, name, vaddr, index, ct, tags):
    return ref.PageCipher(prk, name).open_run(vaddr, index, ct, tags)


def check_pages(helper, d):
    """The engine's page cipher against this one, both ways, plus tampering."""
    mk, ckpt = bytes(range(32)), bytes(range(0x10, 0x20))
    prk = prk_of(mk, ckpt)
    pt = bytes(i % 253 for i in range(3 * 4096))
    vaddr, index, name = 0x7f1234560000, 5, b"pages-3.img"
    open(d + "/pt", "wb").write(pt)
    subprocess.run([helper, "pages", "seal", name.decode(), "%x" % vaddr, str(index), d + "/pt", d + "/ct",
                    d + "/tags"], check=True)
    ct, tags = open(d + "/ct", "rb").read(), open(d + "/tags", "rb").read()
    assert (ct, tags) == pages_seal(prk, name, vaddr, index, pt), "engine and reference pages differ"
    assert pages_open(prk, name, vaddr, index, ct, tags) == pt
    # equal plaintext pages at other addresses give other ciphertext
    same = bytes(4096) * 2
    c2, _ = pages_seal(prk, name, vaddr, index, same)
    assert c2[:4096] != c2[4096:]
    # a page moved to another address or number, or flipped, is refused
    for args in ((vaddr + 4096, index, ct), (vaddr, index + 1, ct), (vaddr, index, ct[:5] + b"\x01" + ct[6:])):
        try:
            pages_open(prk, name, args[0], args[1], args[2], tags)
            raise AssertionError("tampered pages accepted by reference reader")
        except FormatError:
            pass
    rct, rtags = pages_seal(prk, name, vaddr, index + 7, pt)
    open(d + "/rct", "wb").write(rct)
    open(d + "/rtags", "wb").write(rtags)
    subprocess.run([helper, "pages", "open", name.decode(), "%x" % vaddr, str(index + 7), d + "/rct", d + "/rpt",
                    d + "/rtags"], check=True)
    assert open(d + "/rpt", "rb").read() == pt
    bad = subprocess.run([helper, "pages", "open", "pages-4.img", "%x" % vaddr, str(index + 7), d + "/rct",
                          d + "/rpt", d + "/rtags"], capture_output=True)
    assert bad.returncode != 0, "engine opened pages under another image's key"
    for alg, algname in ((1, "lz4"), (2, "zstd")):
        check_regions(helper, d, prk, ckpt, alg, algname)


def check_regions(helper, d, prk, ckpt, alg, algname):
    """Section 11.3: a page image of a compressing checkpoint, both ways: 200
    pages in two runs (regions of 64, 64, 22 and 50 pages), compressible
    ones and random ones."""
    pt = b"".join((b"log line %06d level=INFO user=u%03d\n" % (k, k % 7) * 120)[:4096] if k < 130 or k >= 192
                  else os.urandom(4096) for k in range(200))
    vaddr, name = 0x7f5500000000, "pages-9.img"
    open(d + "/zpt", "wb").write(pt)
    subprocess.run([helper, "regions", "seal", algname, name, "%x" % vaddr, d + "/zpt", d + "/zct", d + "/zidx"],
                   check=True)
    ct, idx = open(d + "/zct", "rb").read(), open(d + "/zidx", "rb").read()
    regions = ref.parse_regions(idx)
    assert [r[1] for r in regions] == [64, 64, 22, 50], regions  # two runs: 150 and 50 pages
    assert regions[0][2] and not regions[3][2], "a compressible region stored as is, or a random one compressed"
    pc = ref.PageCipher(prk, name, ckpt, 1, alg)
    out = []
    for r, (first, n, stored, off, tags) in enumerate(regions):
        v = vaddr + first * 4096
        out.append(pc.open_region(r, v, first, n, ct[off:off + stored]) if stored else
                   pc.open_run(v, first, ct[off:off + n * 4096], tags))
    assert b"".join(out) == pt, "the reference reads the engine's regions wrong"
    assert len(ct) < len(pt) * 0.6, (len(ct), len(pt))
    # a region opened at another address or as another region is refused
    for r, v in ((0, vaddr + 4096), (1, vaddr)):
        try:
            pc.open_region(r, v, 0, 64, ct[:regions[0][2]])
            raise AssertionError("a moved region accepted by the reference reader")
        except FormatError:
            pass
    # the engine reads the reference's
    rct, records = pc.seal_regions(vaddr, 0, pt)
    open(d + "/rzct", "wb").write(rct)
    open(d + "/rzidx", "wb").write(b"".join(records))
    subprocess.run([helper, "regions", "open", algname, name, "%x" % vaddr, d + "/rzct", d + "/rzpt", d + "/rzidx"],
                   check=True)
    assert open(d + "/rzpt", "rb").read() == pt
    bad = subprocess.run([helper, "regions", "open", algname, name, "%x" % (vaddr + 4096), d + "/rzct",
                          d + "/rzpt", d + "/rzidx"], capture_output=True)
    assert bad.returncode != 0, "engine opened regions at another address"


# ---- the text header exchanged with the C++ helper ----

def read_header_txt(path):
    h = {"recipients": []}
    for line in open(path):
        k, *v = line.split()
        if k == "recipient":
            h["recipients"].append((bytes.fromhex(v[0]), int(v[1]), bytes.fromhex(v[2])))
        elif k in ("version", "has_parent", "aead", "chunk_size", "created", "sig_alg", "compress"):
            h[k] = int(v[0])
        elif k == "signer_cert":
            h.setdefault("signer_certs", []).append(bytes.fromhex(v[0]))
        else:
            h[k] = bytes.fromhex(v[0]) if v else b""
    if not h.get("has_parent"):  # the engine exports zeros there (criusec.h)
        h["parent_binding"] = None
    return h


def write_header_txt(path, h):
    """The inverse of read_header_txt, for the engine's helper."""
    with open(path, "w") as f:
        for k in ("version", "has_parent", "aead", "chunk_size", "created", "sig_alg", "compress"):
            f.write("%s %d\n" % (k, h.get(k) or 0))
        for k in ("ckpt_id", "parent_id", "manifest_digest", "mac"):
            f.write("%s %s\n" % (k, bytes(h[k] or b"").hex()))
        f.write("parent_binding %s\n" % bytes(h.get("parent_binding") or b"").hex())
        for fpr, alg, wrapped in h["recipients"]:
            f.write("recipient %s %d %s\n" % (fpr.hex(), alg, wrapped.hex()))
        for c in h.get("signer_certs", []):
            f.write("signer_cert %s\n" % c.hex())
        f.write("signature %s\n" % bytes(h["signature"]).hex())


SIG_OF = {"rsa": 1, "p256": 3, "p384": 4, "ed25519": 5}


def make_signers(d):
    """A self-signed signing certificate of each key type: name -> (cert path, key path)."""
    import datetime
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519
    now = datetime.datetime.utcnow()
    out = {}
    for kind, k in (("rsa", rsa.generate_private_key(public_exponent=65537, key_size=2048)),
                    ("p256", ec.generate_private_key(ec.SECP256R1())),
                    ("p384", ec.generate_private_key(ec.SECP384R1())),
                    ("ed25519", ed25519.Ed25519PrivateKey.generate())):
        name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "criusec ref " + kind)])
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(k.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
                .not_valid_after(now + datetime.timedelta(days=1))
                .sign(k, None if kind == "ed25519" else hashes.SHA256()))
        cp, kp = "%s/sign-%s-cert.pem" % (d, kind), "%s/sign-%s-key.pem" % (d, kind)
        open(cp, "wb").write(cert.public_bytes(serialization.Encoding.PEM))
        open(kp, "wb").write(k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                             serialization.NoEncryption()))
        out[kind] = (cp, kp)
    return out


# ---- the documented test vectors ----

def doc_vectors():
    mk = bytes(range(32))
    ckpt = bytes(range(0x10, 0x20))
    salt = bytes(range(0xa0, 0xb0))
    prk = prk_of(mk, ckpt)
    v = {"prk": prk.hex(), "stream_key": stream_key(prk, b"core", b"core-1.img", salt).hex()}
    for aead in (1, 2):
        v["stream%d" % aead] = stream_seal(mk, ckpt, aead, 4096, b"core", b"core-1.img",
                                           b"criusec test vector\n", salt).hex()
        big = bytes(i % 251 for i in range(10000))
        v["big%d" % aead] = stream_seal(mk, ckpt, aead, 4096, b"pages", b"pages-1.img", big, salt)
        v["big%d_sha256" % aead] = hashlib.sha256(v["big%d" % aead]).hexdigest()
    h = {"version": 1, "ckpt_id": ckpt, "has_parent": 1, "parent_id": bytes(range(0x30, 0x40)), "aead": 1,
         "chunk_size": 65536, "recipients": [(bytes([0xf0]) * 32, 1, bytes([0x55]) * 8)]}
    v["canonical"] = canonical(h).hex()
    v["header_mac_key"] = derive(prk, b"criusec v1 header mac", 32).hex()
    v["header_mac"] = header_mac(prk, h).hex()
    return v


# ---- format 2 (section 10.9) ----

def vector_signer():
    """The Ed25519 key (seed 60..7f) and self-signed certificate of the
    format-2 vectors.  Ed25519 signatures are deterministic, and so is this
    certificate's DER (fixed serial, dates and extensions)."""
    import datetime
    from cryptography.hazmat.primitives.asymmetric import ed25519
    key = ed25519.Ed25519PrivateKey.from_private_bytes(bytes(range(0x60, 0x80)))
    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "criusec test vector signer")])
    usage = x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                          data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
                          encipher_only=False, decipher_only=False)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(0x0c51).not_valid_before(datetime.datetime(2026, 1, 1))
            .not_valid_after(datetime.datetime(2036, 1, 1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(usage, critical=True).sign(key, None))
    return key, cert.public_bytes(serialization.Encoding.DER)


def doc_vectors2():
    """Section 10.9: an unsigned header without parent, and an Ed25519-signed
    header of a child, with its parent binding."""
    mk, ckpt = bytes(range(32)), bytes(range(0x10, 0x20))
    parent_mk, parent_id = bytes(range(0x40, 0x60)), bytes(range(0x30, 0x40))
    prk, parent_prk = prk_of(mk, ckpt), prk_of(parent_mk, parent_id)
    v = {"parent_prk": parent_prk.hex(),
         "binding_key": derive(parent_prk, b"criusec v1 child binding", 32).hex(),
         "parent_binding": parent_binding(parent_prk, parent_id, ckpt).hex()}
    h = {"version": 2, "ckpt_id": ckpt, "created": 1767225600, "has_parent": 0, "parent_id": b"",
         "parent_binding": None, "aead": 1, "chunk_size": 65536, "manifest_digest": bytes(range(0xc0, 0xe0)),
         "recipients": [(bytes([0xf0]) * 32, 1, bytes([0x55]) * 8)], "sig_alg": 0, "signer_certs": [],
         "signature": b"", "compress": 0}
    v["unsigned_canonical2"] = canonical2(h).hex()
    v["unsigned_mac"] = header_mac(prk, h).hex()
    key, der = vector_signer()
    h.update(has_parent=1, parent_id=parent_id, parent_binding=bytes.fromhex(v["parent_binding"]), sig_alg=5,
             signer_certs=[der], compress=2)
    c2 = canonical2(h)
    h["signature"] = key.sign(c2)
    verify_signature(5, der, c2, h["signature"])
    v.update(signer_cert=der.hex(), signed_canonical2_len=str(len(c2)),
             signed_canonical2_sha256=hashlib.sha256(c2).hexdigest(),
             signed_canonical2_head=c2[:c2.index(der)].hex(), signature=h["signature"].hex(),
             signed_mac=header_mac(prk, h).hex())
    return v


def doc_vectors3():
    """Section 11.4: a compressed region (LZ4) and a compressed stream, to be
    opened; the compressed bytes are what this machine's liblz4 made."""
    mk, ckpt = bytes(range(32)), bytes(range(0x10, 0x20))
    prk = prk_of(mk, ckpt)
    page = (b"criusec region test vector\n" * 152)[:4096]
    pc = ref.PageCipher(prk, "pages-1.img", ckpt, 1, 1)
    vaddr, first, r = 0x7f0000001000, 64, 1
    stored = pc.seal_region(r, vaddr, first, page)
    stream = stream_seal(mk, ckpt, 1, 4096, b"core", b"core-1.img", b"criusec test vector\n" * 300,
                         salt=bytes(range(0xa0, 0xb0)), compress=1)
    return {"region_key": derive(prk, b"criusec v1 pages region\x00pages-1.img", 32).hex(),
            "region_aad": pc.region_aad(vaddr, first, 1).hex(),
            "region_nonce": (r.to_bytes(11, "big") + b"\x00").hex(),
            "region_stored": stored.hex(), "lz4_stream": stream.hex()}


# ---- the cross-check ----

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--helper")
    ap.add_argument("--print-vectors", action="store_true")
    args = ap.parse_args()
    if args.print_vectors:
        for k, v in list(doc_vectors().items()) + list(doc_vectors2().items()) + list(doc_vectors3().items()):
            if isinstance(v, str):
                print(k, v)
        return 0

    with tempfile.TemporaryDirectory() as d:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "criusec ref")])
        import datetime
        now = datetime.datetime.utcnow()
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(now)
                .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))
        open(d + "/cert.pem", "wb").write(cert.public_bytes(serialization.Encoding.PEM))
        open(d + "/key.pem", "wb").write(key.private_bytes(serialization.Encoding.PEM,
                                                           serialization.PrivateFormat.PKCS8,
                                                           serialization.NoEncryption()))
        signers = make_signers(d)
        for aead, signer, comp in (("aes-256-gcm", None, ""), ("chacha20-poly1305", "p256", ""),
                                   ("aes-256-gcm", "p384", "zstd"), ("aes-256-gcm", "ed25519", "lz4"),
                                   ("aes-256-gcm", "rsa", "")):
            out = d + "/" + aead + "-" + str(signer)
            os.mkdir(out)
            sign = [signers[signer][1], signers[signer][0]] if signer else []
            subprocess.run([args.helper, "export", out, aead, d + "/cert.pem", *sign], check=True,
                           env=dict(os.environ, CRIUSEC_HELPER_COMPRESS=comp))
            h = read_header_txt(out + "/header.txt")
            assert h["version"] == 2 and h["manifest_digest"] == bytes(range(0xc0, 0xe0))
            assert h["compress"] == {"": 0, "lz4": 1, "zstd": 2}[comp]
            if signer:
                # The engine's signature, verified by the reference (and a flipped bit refused).
                assert h["sig_alg"] == SIG_OF[signer], (signer, h["sig_alg"])
                verify_signature(h["sig_alg"], h["signer_certs"][0], canonical2(h), h["signature"])
                bad = dict(h, created=h["created"] + 1)
                try:
                    verify_signature(h["sig_alg"], h["signer_certs"][0], canonical2(bad), h["signature"])
                    raise AssertionError("a changed header verified")
                except FormatError:
                    pass
            else:
                assert h["sig_alg"] == 0 and not h.get("signer_certs") and h["signature"] == b""
            mk = import_header(h, key)
            n = 0
            for f in sorted(os.listdir(out)):
                if not f.startswith("stream-"):
                    continue
                kind, nm = open(out + "/" + f.replace("stream-", "label-")).read().split()
                sealed = open(out + "/" + f, "rb").read()
                assert sealed[11] == h["compress"], "a stream of a compressing checkpoint not compressed"
                pt = stream_open(mk, h["ckpt_id"], h["aead"], h["chunk_size"], kind.encode(), nm.encode(),
                                 sealed, h["compress"])
                assert pt == open(out + "/" + f.replace("stream-", "plain-"), "rb").read(), f
                n += 1
            assert n >= 6, n
            # tampering is caught by the reference reader too
            st = bytearray(open(out + "/stream-3", "rb").read())
            st[40] ^= 1
            try:
                stream_open(mk, h["ckpt_id"], h["aead"], h["chunk_size"], b"core", b"core-3.img", bytes(st),
                            h["compress"])
                raise AssertionError("tampered stream accepted by reference reader")
            except FormatError:
                pass
            # and the engine opens what the reference sealed
            c = h["chunk_size"]
            for length in (0, 1, c - 1, c, c + 1, 2 * c, 3 * c + 7):
                pt = os.urandom(length)
                pt = pt[:length // 2] + bytes(length - length // 2)  # compressible, in part
                sealed = stream_seal(mk, h["ckpt_id"], h["aead"], c, b"pipes-data", b"pipes-7.img", pt,
                                     compress=h["compress"])
                open(out + "/ref.img", "wb").write(sealed)
                subprocess.run([args.helper, "open", out, d + "/key.pem", "pipes-data", "pipes-7.img",
                                out + "/ref.img", out + "/ref.out"], check=True)
                assert open(out + "/ref.out", "rb").read() == pt, length
            # and a header the reference made and signed, checked (and trusted) by the engine
            if signer:
                own = new_header(mk, h["ckpt_id"], [cert], aead=h["aead"], manifest_digest=bytes(32),
                                 compress=h["compress"])
                seal_header(own, mk, ref.Signer.from_files(signers[signer][1], signers[signer][0]))
                write_header_txt(out + "/header.txt", own)
                subprocess.run([args.helper, "open", out, d + "/key.pem", "pipes-data", "pipes-7.img",
                                out + "/ref.img", out + "/ref.out", signers[signer][0]], check=True)
                own["created"] += 1
                write_header_txt(out + "/header.txt", own)
                r = subprocess.run([args.helper, "open", out, d + "/key.pem", "pipes-data", "pipes-7.img",
                                    out + "/ref.img", out + "/ref.out"], capture_output=True, text=True)
                assert r.returncode != 0 and "does not verify" in r.stderr, r.stderr
            print(aead, signer or "unsigned", "ok")
        # the documented vectors, checked by the engine
        v = doc_vectors()
        for aead in (1, 2):
            open(d + "/big%d.img" % aead, "wb").write(v["big%d" % aead])
        subprocess.run([args.helper, "vectors", v["stream1"], v["stream2"], d + "/big1.img", d + "/big2.img",
                        v["canonical"], v["header_mac"]], check=True)
        print("documented vectors ok")
        v2 = doc_vectors2()
        vkey, _ = vector_signer()
        open(d + "/vector-key.pem", "wb").write(vkey.private_bytes(serialization.Encoding.PEM,
                                                                   serialization.PrivateFormat.PKCS8,
                                                                   serialization.NoEncryption()))
        subprocess.run([args.helper, "vectors2", d + "/vector-key.pem", v2["parent_binding"],
                        v2["unsigned_canonical2"], v2["unsigned_mac"], v2["signer_cert"],
                        v2["signed_canonical2_sha256"], v2["signature"], v2["signed_mac"]], check=True)
        print("documented format-2 vectors ok")
        # Implicit rejection: a bad wrapped key gives the same substitute in both.
        wrapped = bytearray(key.public_key().encrypt(bytes(32), padding.PKCS1v15()))
        wrapped[7] ^= 1
        out = subprocess.run([args.helper, "reject", d + "/key.pem", bytes(wrapped).hex()], check=True,
                             capture_output=True, text=True).stdout.strip()
        h = {"recipients": [(fingerprint(key.public_key()), 1, bytes(wrapped))]}
        assert out == ref._unwrap(h, key).hex(), "the implicit-rejection substitutes differ"
        print("implicit rejection ok")
        check_pages(args.helper, d)
        print("pages ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
