# SPDX-License-Identifier: LGPL-2.1-only
"""What a reader makes of a checkpoint's header, for people and for crit
(crit info DIR, crit x DIR ps): Checkpoint.describe() and summary().
"""
from .common import AEAD_NAMES, COMPRESS_NAMES, CriusecError, PolicyError, PrivateKeyError, _hex, _need_crypto, _utc
from .header import import_header
from .keys import fingerprint, load_private_key


def describe(ck):
    """The checkpoint's header and what this reader makes of it (crit
    info DIR, crit x DIR ps), as a dict.  Raises only for a malformed
    header: a refusal is reported in "refused"."""
    if not ck.encrypted:
        try:
            ck.policy.check_plain(ck.dir)
            refused = None
        except PolicyError as e:
            refused = str(e)
        return {"encrypted": False, "refused": refused}
    _need_crypto()
    # What was checked already is shown as it was checked.
    h = ck.header if ck.header is not None else ck._read_header()
    r = ck.report if ck.report is not None else ck.policy.evaluate(h)
    mac = "not checked (no private key of a recipient)"
    mine = {}
    if r["refusal"] is not None:
        mac = "not checked (refused)"  # no secret is used for a refused checkpoint
    elif ck.mk is not None:
        mac = "verified"
        if ck.key_path:
            mine[fingerprint(load_private_key(ck.key_path).public_key())] = ck.key_path
    else:
        for path in ck.keys:
            try:
                priv = load_private_key(path)
            except PrivateKeyError:
                continue
            fpr = fingerprint(priv.public_key())
            if any(fpr == s[0] for s in h["recipients"]):
                mine[fpr] = path
                try:
                    import_header(h, priv)
                    mac = "verified"
                except CriusecError as e:
                    mac = "failed (%s)" % e
                break
    return {
        "encrypted": True, "format": h["version"], "ckpt_id": _hex(h["ckpt_id"]),
        "aead": AEAD_NAMES[h["aead"]], "chunk_size": h["chunk_size"],
        "compress": COMPRESS_NAMES.get(h.get("compress") or 0),
        "created": h.get("created"), "created_utc": _utc(h["created"]) if h.get("created") is not None else None,
        "recipients": [{"fingerprint": "SHA256:" + _hex(f), "key": mine.get(f)} for f, _, _ in h["recipients"]],
        "parent_id": _hex(h["parent_id"]) if h["has_parent"] else None,
        "signature": r["signature"], "sig_alg": r["alg"], "signer": r["signer"], "chain": r["chain"],
        "trusted": r["trusted"], "trust": r["trust"], "mac": mac,
        "refused": str(r["refusal"]) if r["refusal"] is not None else None,
    }

def summary(ck):
    """describe() as lines of text, for people."""
    d = describe(ck)
    if not d["encrypted"]:
        return ["checkpoint  plain (no cipher.img)" + ("; refused: " + d["refused"] if d["refused"] else "")]
    out = ["checkpoint  %s (criusec format %d, %s)" % (d["ckpt_id"], d["format"], d["aead"])]
    if d["created"] is not None:
        out.append("created     %s" % d["created_utc"])
    for r in d["recipients"]:
        out.append("recipient   %s%s" % (r["fingerprint"], " (key %s)" % r["key"] if r["key"] else ""))
    out.append("parent      %s" % (d["parent_id"] or "none"))
    if d["signer"]:
        out.append("signer      %s (%s)" % (d["signer"], d["sig_alg"]))
        out += ["  issued by %s" % s for s in d["chain"][1:]]
    out.append("signature   %s" % d["signature"])
    if d["trusted"]:
        out.append("trusted     yes (%s)" % d["trusted"])
    elif d["trust"] == "no trust configured":
        out.append("trusted     not checked: no trust configured (--trust PEM)")
    elif d["signature"] == "verified":
        out.append("trusted     no: %s" % d["trust"])
    out.append("header MAC  %s" % d["mac"])
    if d["refused"]:
        out.append("refused     %s" % d["refused"])
    return out
