# SPDX-License-Identifier: LGPL-2.1-only
"""The trust store (section 10.4): pinned signers and CA anchors, and path
validation of a signer's chain (engine: trust.cpp).
"""
import os

from .common import (
    InvalidSignature, UntrustedSignerError, _need_crypto, _now, ec, ed25519, padding, rsa, serialization, x509)
from .sign import _cert, _ext, _pem_certs, _read_file, _signing_cert_problem, _validity_problem, cert_subject


def _cert_signed_by(cert, issuer):
    """Whether issuer's key made cert's signature.  Certificates signed with
    RSA PKCS#1 v1.5, ECDSA (SHA-2) or Ed25519 only: cryptography 38 has no
    path validation, and this module checks only what it can check."""
    from cryptography.x509.oid import SignatureAlgorithmOID as S
    oid, pub = cert.signature_algorithm_oid, issuer.public_key()
    what = "certificate %s" % cert_subject(cert)
    if oid == S.RSASSA_PSS:
        raise UntrustedSignerError("%s is signed with RSA-PSS, which is not supported by pycriu" % what)
    if oid in (S.RSA_WITH_MD5, S.RSA_WITH_SHA1, S.ECDSA_WITH_SHA1, S.DSA_WITH_SHA1):
        raise UntrustedSignerError("%s is signed with a weak algorithm (%s)" % (what, oid._name))
    try:
        if oid in (S.RSA_WITH_SHA224, S.RSA_WITH_SHA256, S.RSA_WITH_SHA384, S.RSA_WITH_SHA512):
            if not isinstance(pub, rsa.RSAPublicKey):
                return False
            pub.verify(cert.signature, cert.tbs_certificate_bytes, padding.PKCS1v15(), cert.signature_hash_algorithm)
        elif oid in (S.ECDSA_WITH_SHA224, S.ECDSA_WITH_SHA256, S.ECDSA_WITH_SHA384, S.ECDSA_WITH_SHA512):
            if not isinstance(pub, ec.EllipticCurvePublicKey):
                return False
            pub.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm))
        elif oid == S.ED25519:
            if not isinstance(pub, ed25519.Ed25519PublicKey):
                return False
            pub.verify(cert.signature, cert.tbs_certificate_bytes)
        else:
            raise UntrustedSignerError("%s is signed with %s, which is not supported by pycriu"
                                       % (what, getattr(oid, "_name", oid.dotted_string)))
    except InvalidSignature:
        return False
    return True


def _issuer_problem(ca, now, below):
    """Why ca may not issue a certificate with `below` intermediates under it, or None."""
    what = "issuer %s" % cert_subject(ca)
    bc, ku = _ext(ca, x509.BasicConstraints), _ext(ca, x509.KeyUsage)
    if bc is None or not bc.ca:
        return "%s is not a CA (basicConstraints CA:TRUE)" % what
    if bc.path_length is not None and below > bc.path_length:
        return "%s allows %d intermediate CAs under it, the chain has %d" % (what, bc.path_length, below)
    if ku is not None and not ku.key_cert_sign:
        return "%s is not allowed to sign certificates (keyUsage lacks keyCertSign)" % what
    return _validity_problem(ca, now, what)


def _is_ca(cert):
    bc = _ext(cert, x509.BasicConstraints)
    return bool(bc and bc.ca)


class TrustStore:
    """Trusted certificates from PEM files (section 10.4).  Each one is a
    pinned signer (accepted when it is the signer's certificate, byte for
    byte); the CAs among them (basicConstraints CA:TRUE) are also anchors
    for the signer's chain."""

    def __init__(self, paths=()):
        _need_crypto()
        self.paths = []
        self.certs = []  # (DER, certificate)
        for p in paths:
            self.add_file(p)

    def add_file(self, path):
        path = os.fspath(path)
        self.add_pem(_read_file(path, "trust file"), "trust file %s" % path)
        self.paths.append(path)

    def add_pem(self, data, origin="trust file"):
        for c in _pem_certs(data, origin):
            self.certs.append((c.public_bytes(serialization.Encoding.DER), c))

    def subjects(self):
        return [cert_subject(c) for _, c in self.certs]

    def __len__(self):
        return len(self.certs)

    def verify(self, chain, now=None):
        """How the chain (DER, the signer's first) is trusted at `now`:
        "pinned" or "CA <anchor subject>"; else UntrustedSignerError with
        the reason."""
        now = _now(now)
        certs = [_cert(d, "signer certificate %d" % i) for i, d in enumerate(chain)]
        if not certs:
            raise UntrustedSignerError("the checkpoint is unsigned")
        problem = _signing_cert_problem(certs[0], now)
        if problem:
            raise UntrustedSignerError(problem)
        if any(bytes(chain[0]) == der for der, _ in self.certs):
            return "pinned"
        anchors = [c for _, c in self.certs if _is_ca(c)]
        cur = certs[0]
        for depth in range(len(certs)):
            for ca in anchors:
                if ca.subject == cur.issuer and _cert_signed_by(cur, ca):
                    problem = _issuer_problem(ca, now, depth)
                    if problem:
                        raise UntrustedSignerError("trust anchor: " + problem)
                    return "CA " + cert_subject(ca)
            if depth + 1 == len(certs):
                break
            nxt = certs[depth + 1]
            if nxt.subject != cur.issuer or not _cert_signed_by(cur, nxt):
                raise UntrustedSignerError("signer chain: %s is not issued by the next certificate, %s"
                                           % (cert_subject(cur), cert_subject(nxt)))
            problem = _issuer_problem(nxt, now, depth)
            if problem:
                raise UntrustedSignerError("signer chain: " + problem)
            cur = nxt
        if not anchors:
            raise UntrustedSignerError("unknown signer %s (not a pinned certificate, and the trust files hold no CA)"
                                       % cert_subject(certs[0]))
        raise UntrustedSignerError("signer %s is not signed by a trusted CA (its chain ends at %s, issued by %s)"
                                   % (cert_subject(certs[0]), cert_subject(cur), cur.issuer.rfc4514_string()))
