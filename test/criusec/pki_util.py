"""Certificates for criusec's signature and trust tests, made with
python3-cryptography's x509 builder: a root CA, intermediates, signer
leaves of every key type of format 2 (section 10.3) and the broken
variants a trust store must refuse."""
import datetime
import pathlib
import shutil
import subprocess

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

DAY = datetime.timedelta(days=1)
NOW = datetime.datetime.utcnow().replace(microsecond=0)
KEY_TYPES = ("rsa", "p256", "p384", "ed25519")
# The sig_alg a Signer picks for each key type
SIG_ALG_OF = {"rsa": 1, "p256": 3, "p384": 4, "ed25519": 5}


def new_key(kind):
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if kind == "p256":
        return ec.generate_private_key(ec.SECP256R1())
    if kind == "p384":
        return ec.generate_private_key(ec.SECP384R1())
    if kind == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    raise ValueError(kind)


def _hash_for(key):
    return None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()


def name(cn):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_cert(cn, key, issuer=None, ca=False, path_len=None, usage="sign", not_before=None, not_after=None,
              basic=True):
    """A certificate for key, signed by issuer (a Cert) or self-signed.
    usage: "sign" (digitalSignature), "ca" (keyCertSign, cRLSign),
    "encipher" (keyEncipherment only), None (no keyUsage)."""
    pub = key.public_key()
    b = (x509.CertificateBuilder().subject_name(name(cn)).public_key(pub).serial_number(x509.random_serial_number())
         .not_valid_before(not_before or NOW - DAY).not_valid_after(not_after or NOW + 30 * DAY)
         .issuer_name(issuer.cert.subject if issuer else name(cn)))
    if basic:
        b = b.add_extension(x509.BasicConstraints(ca=ca, path_length=path_len if ca else None), critical=True)
    if usage:
        flags = dict(digital_signature=False, content_commitment=False, key_encipherment=False,
                     data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
                     encipher_only=False, decipher_only=False)
        flags.update({"sign": {"digital_signature": True}, "ca": {"key_cert_sign": True, "crl_sign": True},
                      "encipher": {"key_encipherment": True}, "ca-nosign": {"crl_sign": True}}[usage])
        b = b.add_extension(x509.KeyUsage(**flags), critical=True)
    signer = issuer.key if issuer else key
    return Cert(cn, key, b.sign(signer, _hash_for(signer)))


class Cert:
    def __init__(self, cn, key, cert):
        self.cn, self.key, self.cert = cn, key, cert

    @property
    def der(self):
        return self.cert.public_bytes(serialization.Encoding.DER)

    @property
    def pem(self):
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def key_pem(self):
        return self.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption())

    def write(self, d, chain=()):
        """key and certificate chain (this one first) as PEM files in d: (key path, cert path)."""
        kp, cp = d / f"{self.cn}.key", d / f"{self.cn}.pem"
        kp.write_bytes(self.key_pem())
        cp.write_bytes(self.pem + b"".join(c.pem for c in chain))
        return str(kp), str(cp)


class Pki:
    """root (RSA) -> inter (P-384) -> leaves of every key type;
    edroot (Ed25519) -> edleaf; a stranger CA; the broken variants."""

    def __init__(self):
        self.root = make_cert("criusec test root", new_key("rsa"), ca=True, usage="ca")
        self.inter = make_cert("criusec test intermediate", new_key("p384"), self.root, ca=True, path_len=0,
                               usage="ca")
        self.leaf = {k: make_cert("signer-" + k, new_key(k), self.inter) for k in KEY_TYPES}
        self.edroot = make_cert("criusec ed25519 root", new_key("ed25519"), ca=True, usage="ca")
        self.edleaf = make_cert("signer-under-ed25519", new_key("p256"), self.edroot)
        self.stranger = make_cert("stranger root", new_key("p256"), ca=True, usage="ca")
        self.foreign = make_cert("signer-foreign", new_key("p256"), self.stranger)
        self.selfsigned = make_cert("signer-selfsigned", new_key("ed25519"))
        k = new_key("p256")
        self.expired = make_cert("signer-expired", k, self.inter, not_before=NOW - 30 * DAY,
                                 not_after=NOW - DAY)
        self.future = make_cert("signer-future", new_key("p256"), self.inter, not_before=NOW + DAY,
                                not_after=NOW + 30 * DAY)
        self.encipher = make_cert("signer-encipher-only", new_key("rsa"), self.inter, usage="encipher")
        self.nousage = make_cert("signer-no-keyusage", new_key("p256"), self.inter, usage=None)
        # broken issuers
        self.notca = make_cert("intermediate-not-ca", new_key("p256"), self.root, ca=False, usage="ca")
        self.under_notca = make_cert("signer-under-not-ca", new_key("p256"), self.notca)
        self.nocertsign = make_cert("intermediate-no-certsign", new_key("p256"), self.root, ca=True,
                                    usage="ca-nosign")
        self.under_nocertsign = make_cert("signer-under-no-certsign", new_key("p256"), self.nocertsign)
        self.old_inter = make_cert("intermediate-expired", new_key("p256"), self.root, ca=True, usage="ca",
                                   not_before=NOW - 30 * DAY, not_after=NOW - DAY)
        self.under_old = make_cert("signer-under-expired-intermediate", new_key("p256"), self.old_inter,
                                   not_after=NOW + 30 * DAY)
        # the intermediate allows no CA below it (path_len 0)
        self.sub = make_cert("sub-intermediate", new_key("p256"), self.inter, ca=True, usage="ca")
        self.under_sub = make_cert("signer-under-sub", new_key("p256"), self.sub)

    def chain(self, leaf):
        """The chain a dump stores for leaf: the leaf and its issuers, without the root."""
        up = {self.inter.cn: [self.inter], self.sub.cn: [self.sub, self.inter], self.notca.cn: [self.notca],
              self.nocertsign.cn: [self.nocertsign], self.old_inter.cn: [self.old_inter]}
        issuer = leaf.cert.issuer.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
        return [leaf] + up.get(issuer, [])


def openssl_pss_signed(d, ca):
    """A P-256 signer certificate that ca (an RSA Cert) signs with RSA-PSS,
    made by openssl (cryptography 38 cannot sign PSS certificates); None
    without openssl."""
    if not shutil.which("openssl"):
        return None
    key = new_key("p256")
    kp, cap, cakp = d / "pss-leaf.key", d / "pss-ca.pem", d / "pss-ca.key"
    kp.write_bytes(Cert("x", key, None).key_pem())
    cap.write_bytes(ca.pem)
    cakp.write_bytes(ca.key_pem())
    csr, out = d / "pss-leaf.csr", d / "pss-leaf.pem"
    subprocess.run(["openssl", "req", "-new", "-key", kp, "-subj", "/CN=signer-pss-signed", "-out", csr],
                   check=True, capture_output=True)
    ext = d / "pss.ext"
    ext.write_text("keyUsage=critical,digitalSignature\nbasicConstraints=critical,CA:FALSE\n")
    subprocess.run(["openssl", "x509", "-req", "-in", csr, "-CA", cap, "-CAkey", cakp, "-CAcreateserial",
                    "-days", "30", "-sha256", "-sigopt", "rsa_padding_mode:pss", "-sigopt", "rsa_pss_saltlen:32",
                    "-extfile", ext, "-out", out], check=True, capture_output=True)
    return Cert("signer-pss-signed", key, x509.load_pem_x509_certificate(out.read_bytes()))


# ---- keys and certificates as PEM files, any validity window and key usage ----

class FilePki:
    """Keys and certificates written as PEM files under a directory."""

    def __init__(self, d):
        self.d = pathlib.Path(d)

    def _write(self, name, key, cert):
        kp, cp = self.d / f"{name}-key.pem", self.d / f"{name}-cert.pem"
        kp.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption()))
        kp.chmod(0o600)
        cp.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return str(cp), str(kp)

    @staticmethod
    def _key(kind):
        if kind == "rsa":
            return rsa.generate_private_key(65537, 2048)
        if kind == "p256":
            return ec.generate_private_key(ec.SECP256R1())
        if kind == "p384":
            return ec.generate_private_key(ec.SECP384R1())
        return ed25519.Ed25519PrivateKey.generate()

    def make(self, name, kind="rsa", issuer=None, ca=False, usage=("sign", "encipher"),
             not_before=None, not_after=None):
        """A certificate: self-signed, or issued by issuer = (cert, key) objects."""
        key = self._key(kind)
        now = datetime.datetime.utcnow()
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        b = (x509.CertificateBuilder()
             .subject_name(subject)
             .issuer_name(issuer[0].subject if issuer else subject)
             .public_key(key.public_key())
             .serial_number(x509.random_serial_number())
             .not_valid_before(not_before or now - datetime.timedelta(hours=1))
             .not_valid_after(not_after or now + datetime.timedelta(days=30))
             .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
             .add_extension(x509.KeyUsage(digital_signature="sign" in usage, content_commitment=False,
                                          key_encipherment="encipher" in usage, data_encipherment=False,
                                          key_agreement=False, key_cert_sign=ca, crl_sign=ca,
                                          encipher_only=False, decipher_only=False), critical=True))
        signer = issuer[1] if issuer else key
        alg = None if isinstance(signer, ed25519.Ed25519PrivateKey) else hashes.SHA256()
        cert = b.sign(signer, alg)
        self.objs = getattr(self, "objs", {})
        self.objs[name] = (cert, key)
        return self._write(name, key, cert)

    def chain(self, name, *names):
        """A PEM file with the certificates of name, then names (its issuers)."""
        p = self.d / f"{name}-chain.pem"
        p.write_bytes(b"".join((self.d / f"{n}-cert.pem").read_bytes() for n in (name, *names)))
        return str(p)
