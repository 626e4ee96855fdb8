# SPDX-License-Identifier: LGPL-2.1-only
"""The restore policy (section 10.8), decided in one place: encryption
required, signed, trusted, not too old (engine: policy.cpp).
"""
import os

from .common import (
    CIPHER_IMG, FUTURE_SLACK, FormatError, HOW_TO_ENCRYPT, HOW_TO_SIGN, HOW_TO_TRUST, PolicyError,
    REQUIRED_MARKER, SIG_ALGS, TRUSTED_SIGNERS, UntrustedSignerError, _exists, _now, _utc)
from .sign import cert_subject, verify_signature
from .trust import TrustStore
from .header import canonical2


class Policy:
    """Which checkpoints a reader accepts.

    trust: PEM file path(s) of trusted signers, or a TrustStore; None (or
    []): TRUSTED_SIGNERS when it exists.  The reader then *requires
    protection*, as it also does while REQUIRED_MARKER exists (or when
    required=True).  max_age: refuse checkpoints signed more than that many
    seconds ago (or more than FUTURE_SLACK in the future), and unsigned
    ones.  now: the time of the checks (default: each check's)."""

    def __init__(self, trust=None, max_age=None, now=None, required=None):
        if isinstance(trust, TrustStore):
            self.store = trust
        else:
            if isinstance(trust, (str, bytes, os.PathLike)):
                trust = [trust]
            paths = [os.fspath(p) for p in trust or []]
            if not paths and _exists(TRUSTED_SIGNERS):
                paths = [TRUSTED_SIGNERS]
            self.store = TrustStore(paths) if paths else None
        self.marker = _exists(REQUIRED_MARKER)
        self.required = bool(self.store) or self.marker if required is None else bool(required)
        self.max_age = max_age
        self.now = now

    @classmethod
    def permissive(cls):
        """No trust, nothing required, whatever the host configures."""
        return cls(trust=TrustStore(), required=False)

    def why_required(self):
        if self.store:
            return "signers are trusted from %s" % ", ".join(self.store.paths or ["a trust store"])
        if self.marker:
            return "%s exists" % REQUIRED_MARKER
        return "protection is required"

    def check_plain(self, what):
        """A checkpoint without cipher.img."""
        if self.required:
            raise PolicyError("%s: not an encrypted checkpoint (no %s), refused because %s: %s"
                              % (what, CIPHER_IMG, self.why_required(), HOW_TO_ENCRYPT))

    def evaluate(self, h):
        """What the policy makes of a checked header (check_header): a dict
        with signature ("unsigned", "verified" or "failed"), signer, chain
        (subjects), alg, trusted ("pinned", "CA ..." or None), trust (why
        not trusted), created, and refusal: the exception that refuses the
        checkpoint, or None."""
        r = {"signature": "unsigned", "alg": SIG_ALGS[h.get("sig_alg") or 0], "signer": None, "chain": [],
             "trusted": None, "trust": None, "created": h.get("created"), "refusal": None}
        now = _now(self.now)

        def refuse(exc):
            if r["refusal"] is None:
                r["refusal"] = exc

        if self.required and not self.store:
            refuse(PolicyError("cipher.img: %s requires trusted signatures, but no signer is trusted: %s"
                               % (REQUIRED_MARKER, HOW_TO_TRUST)))
        certs = h.get("signer_certs") or []
        if h["version"] == 1 or not h.get("sig_alg"):
            what = "format-1 checkpoint (no signature)" if h["version"] == 1 else "unsigned checkpoint"
            r["trust"] = "unsigned"
            if self.required:
                refuse(PolicyError("cipher.img: %s refused because %s: %s" % (what, self.why_required(), HOW_TO_SIGN)))
            if self.max_age is not None:
                refuse(PolicyError("cipher.img: %s refused: a maximum age needs a signed creation time: %s"
                                   % (what, HOW_TO_SIGN)))
            return r
        try:
            r["chain"] = [cert_subject(d) for d in certs]
            r["signer"] = r["chain"][0]
            verify_signature(h["sig_alg"], certs[0], canonical2(h), h["signature"])
            r["signature"] = "verified"
        except FormatError as e:
            r["signature"] = "failed"
            r["refusal"] = e  # tampering comes before any policy reason
            return r
        if self.store:
            try:
                r["trusted"] = self.store.verify(certs, now)
            except UntrustedSignerError as e:
                r["trust"] = str(e)
                refuse(UntrustedSignerError("cipher.img: untrusted signer: %s; to trust it, %s" % (e, HOW_TO_TRUST)))
        else:
            r["trust"] = "no trust configured"
        if self.max_age is not None:
            age = now - h["created"]
            if age > self.max_age:
                refuse(PolicyError("cipher.img: the checkpoint was signed %d s ago (%s), more than the maximum "
                                   "age of %d s" % (age, _utc(h["created"]), self.max_age)))
            elif -age > FUTURE_SLACK:
                refuse(PolicyError("cipher.img: the checkpoint's creation time is %d s in the future (%s)"
                                   % (-age, _utc(h["created"]))))
        return r

    def check(self, h):
        """evaluate(h), raising its refusal."""
        r = self.evaluate(h)
        if r["refusal"] is not None:
            raise r["refusal"]
        return r
