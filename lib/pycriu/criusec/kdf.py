# SPDX-License-Identifier: LGPL-2.1-only
"""Key derivation (format section 2): a checkpoint's PRK from its master key,
and HKDF-Expand of the keys under it (engine: kdf.cpp).
"""
import hashlib
import hmac

from .common import HKDFExpand, _need_crypto, hashes


def prk_of(mk, ckpt_id):
    """HKDF-Extract(salt=ckpt_id, IKM=mk), i.e. HMAC-SHA256(ckpt_id, mk)."""
    return hmac.new(ckpt_id, mk, hashlib.sha256).digest()


def derive(prk, info, length):
    _need_crypto()
    return HKDFExpand(hashes.SHA256(), length, info).derive(prk)
