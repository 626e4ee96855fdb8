# SPDX-License-Identifier: LGPL-2.1-only
"""Signatures of format-2 headers (section 10.3): signer certificates, their
checks, and Signer (engine: sign.cpp).
"""
import calendar
import re

from .common import (
    CriusecError, FormatError, InvalidSignature, MAX_SIGNER_CERTS, SIG_ALGS, _need_crypto, _now, _utc, ec,
    ed25519, hashes, padding, rsa, serialization, x509)
from .keys import _no_pkcs11, is_pkcs11_url


def _cert(der, what="signer certificate"):
    _need_crypto()
    try:
        return x509.load_der_x509_certificate(bytes(der))
    except ValueError:
        raise FormatError("cipher.img: %s is not a DER X.509 certificate" % what) from None


def cert_subject(cert):
    """RFC 4514 subject of a certificate (object or DER)."""
    if isinstance(cert, (bytes, bytearray)):
        cert = _cert(cert)
    return cert.subject.rfc4514_string() or "(empty subject)"


def _ts(dt):
    return calendar.timegm(dt.utctimetuple())


def _key_name(pub):
    if isinstance(pub, rsa.RSAPublicKey):
        return "RSA-%d" % pub.key_size
    if isinstance(pub, ec.EllipticCurvePublicKey):
        return "EC %s" % pub.curve.name
    if isinstance(pub, ed25519.Ed25519PublicKey):
        return "Ed25519"
    return type(pub).__name__


def alg_matches_key(alg, pub):
    """Whether sig_alg `alg` is the one for the type (and curve) of public key pub."""
    if alg in (1, 2):
        return isinstance(pub, rsa.RSAPublicKey) and pub.key_size >= 2048
    if alg in (3, 4):
        return isinstance(pub, ec.EllipticCurvePublicKey) and \
            pub.curve.name == ("secp256r1" if alg == 3 else "secp384r1")
    return alg == 5 and isinstance(pub, ed25519.Ed25519PublicKey)


def _pss():
    return padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)


def verify_signature(alg, leaf_der, data, sig):
    """Verify sig over data with the key of the DER certificate leaf_der
    under sig_alg alg (section 10.3).  No trust decision (TrustStore).
    Raises FormatError."""
    pub = _cert(leaf_der).public_key()
    if alg not in SIG_ALGS or alg == 0:
        raise FormatError("cipher.img: unsupported signature algorithm %d" % alg)
    if not alg_matches_key(alg, pub):
        raise FormatError("cipher.img: signature algorithm %s does not match the signer's %s key"
                          % (SIG_ALGS[alg], _key_name(pub)))
    try:
        if alg == 1:
            pub.verify(bytes(sig), bytes(data), _pss(), hashes.SHA256())
        elif alg == 2:
            pub.verify(bytes(sig), bytes(data), padding.PKCS1v15(), hashes.SHA256())
        elif alg in (3, 4):
            pub.verify(bytes(sig), bytes(data), ec.ECDSA(hashes.SHA256() if alg == 3 else hashes.SHA384()))
        else:
            pub.verify(bytes(sig), bytes(data))
    except InvalidSignature:
        raise FormatError("cipher.img: the signature does not verify (header altered, or not signed "
                          "by its signer certificate's key)") from None


def _ext(cert, cls):
    """The value of a certificate's extension, or None."""
    try:
        return cert.extensions.get_extension_for_class(cls).value
    except x509.ExtensionNotFound:
        return None


def _validity_problem(cert, now, what):
    if now < _ts(cert.not_valid_before):
        return "%s is not yet valid (notBefore %s)" % (what, _utc(_ts(cert.not_valid_before)))
    if now > _ts(cert.not_valid_after):
        return "%s has expired (notAfter %s)" % (what, _utc(_ts(cert.not_valid_after)))
    return None


def _signing_cert_problem(cert, now):
    """Section 10.4 steps 2-3 for a signer certificate: a reason, or None."""
    what = "signer certificate %s" % cert_subject(cert)
    ku = _ext(cert, x509.KeyUsage)
    if ku is not None and not ku.digital_signature:
        return "%s is not allowed to sign (its keyUsage lacks digitalSignature)" % what
    return _validity_problem(cert, now, what)


def _pem_certs(data, origin):
    """The certificates of a PEM buffer, in order."""
    blocks = re.findall(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", data, re.S)
    if not blocks:
        raise CriusecError("%s holds no PEM certificate" % origin)
    try:
        return [x509.load_pem_x509_certificate(b) for b in blocks]
    except ValueError:
        raise CriusecError("%s: a PEM certificate that cannot be parsed" % origin) from None


def _read_file(path, what):
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise CriusecError("%s %s: %s" % (what, path, e.strerror)) from None


def load_signing_key(path):
    """A PEM private key of any type of section 10.3."""
    if is_pkcs11_url(path):
        _no_pkcs11(path, "signing key")
    _need_crypto()
    data = _read_file(path, "signing key")
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise CriusecError("signing key %s is password-protected; give an unencrypted PEM key" % path) from None
    except ValueError:
        raise CriusecError("%s is not a PEM private key" % path) from None


class Signer:
    """A signing key and its certificate chain (the signer's first), as a
    dump signs (section 10.3): sig_alg by the key's type (RSA: PSS, or
    alg=2 for PKCS#1 v1.5), after checking that the certificate is the
    key's and may sign at `now`."""

    def __init__(self, key, chain, alg=None, now=None):
        _need_crypto()
        certs = [c if isinstance(c, x509.Certificate) else x509.load_der_x509_certificate(bytes(c)) for c in chain]
        if not 1 <= len(certs) <= MAX_SIGNER_CERTS:
            raise CriusecError("a signer chain has 1..%d certificates, not %d" % (MAX_SIGNER_CERTS, len(certs)))
        pub = key.public_key()
        leaf_pub = certs[0].public_key()
        spki = serialization.PublicFormat.SubjectPublicKeyInfo
        if leaf_pub.public_bytes(serialization.Encoding.DER, spki) != \
                pub.public_bytes(serialization.Encoding.DER, spki):
            raise CriusecError("signer certificate %s is not the signing key's" % cert_subject(certs[0]))
        if alg is None:
            alg = next((a for a in (1, 3, 4, 5) if alg_matches_key(a, pub)), None)
        if alg is None or not alg_matches_key(alg, pub):
            raise CriusecError("a %s key cannot sign a checkpoint%s (RSA >= 2048 bits, EC P-256 or P-384, "
                               "Ed25519)" % (_key_name(pub), "" if alg is None else " with " + SIG_ALGS[alg]))
        problem = _signing_cert_problem(certs[0], _now(now))
        if problem:
            raise CriusecError(problem)
        self.key, self.alg = key, alg
        self.chain = [c.public_bytes(serialization.Encoding.DER) for c in certs]
        self.subject = cert_subject(certs[0])

    @classmethod
    def from_files(cls, key_path, cert_path, alg=None, now=None):
        key = load_signing_key(key_path)
        return cls(key, _pem_certs(_read_file(cert_path, "signer certificate"), cert_path), alg, now)

    def sign(self, data):
        data = bytes(data)
        if self.alg == 1:
            return self.key.sign(data, _pss(), hashes.SHA256())
        if self.alg == 2:
            return self.key.sign(data, padding.PKCS1v15(), hashes.SHA256())
        if self.alg in (3, 4):
            return self.key.sign(data, ec.ECDSA(hashes.SHA256() if self.alg == 3 else hashes.SHA384()))
        return self.key.sign(data)
