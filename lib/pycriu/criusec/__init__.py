# SPDX-License-Identifier: LGPL-2.1-only
"""Reading and writing criusec (encrypted CRIU) checkpoints.

The byte formats are specified in Documentation/criusec-format.md; this
package implements them with Python's ``cryptography`` (Debian:
python3-cryptography).  It is the one Python implementation: crit uses it,
and the engine's test suite cross-checks the engine against it
(criu/criusec/tests/criusec_ref.py).

Its modules mirror the engine's (criu/criusec/src/):

* ``common``: the format's constants, the errors, small shared helpers;
* ``kdf``: the checkpoint's PRK and HKDF-Expand (kdf.cpp);
* ``keys``: private keys, fingerprints, unwrapping a recipient stanza
  (pki.cpp, pkcs11.cpp);
* ``sign``: signer certificates, signatures, ``Signer`` (sign.cpp);
* ``trust``: ``TrustStore``, pinned signers and CA anchors (trust.cpp);
* ``policy``: ``Policy``, the restore policy of section 10.8 (policy.cpp);
* ``header``: cipher.img of format 1 and 2 (``canonical``, ``canonical2``,
  ``header_mac``, ``import_header``, ``parent_binding``, ``seal_header``)
  (ctx.cpp);
* ``compress``, ``stream``: block compression and image streams
  (``stream_seal``, ``stream_open``) (compress.cpp, stream.cpp);
* ``pages``: the page cipher, ``PageCipher``, and compressed regions
  (page_cipher.cpp, page_index.cpp);
* ``manifest``: cipher-manifest.img and CRIU's table of image kinds
  (manifest.cpp);
* ``crit``: what crit does with an encrypted checkpoint (crit only calls
  in here; imported by crit, not by this package);
* ``checkpoint``: ``Checkpoint``, an image directory.  It finds
  ``cipher.img`` beside the images, applies the policy, verifies the
  signature, unwraps the checkpoint's key with a recipient's private key,
  and serves every image as the plaintext CRIU wrote, checked as criu
  checks it on restore (header MAC, manifest digest, each image's size and
  digest, stream AAD, chunk order, final chunk, page tags, the parent's
  binding).  On a plain checkpoint it just reads the files, where the
  policy allows.  Its pages are read by ``memory.PageReader``, its edits
  (``write_image``, ``write_pages``, ``reseal``) made by ``edit.Editor``,
  its description (``describe``, ``summary``) written by ``report``.  New
  checkpoints: ``Checkpoint.create``.

Every name is importable from the package itself, as from the one module
it used to be (``from pycriu import criusec; criusec.Checkpoint``).

Every failure raises ``CriusecError`` (or a subclass) whose message starts
with the name of the image at fault (cipher.img for the header).
"""
from .common import (  # noqa: F401
    HAVE_CRYPTOGRAPHY, MAGIC, STREAM_HEADER_LEN, TAG_LEN, ID_LEN, FPR_LEN, MAC_LEN, MK_LEN, DIGEST_LEN, PAGE_SIZE,
    PAGE_TAG_LEN, MAX_COUNTER, AEAD_NAMES, SIG_ALGS, MAX_SIGNER_CERTS, MAX_CERT_LEN, MAX_SIG_LEN, FUTURE_SLACK,
    V2_FIELDS, COMPRESS_NAMES, STREAM_BLOCK, STORED_FLAG, REGION_PAGES, MAX_REGION_PAGES, DEFAULT_KEY,
    TRUSTED_SIGNERS, REQUIRED_MARKER, CIPHER_IMG, MANIFEST_IMG, MANIFEST_KIND, PAGE_TAGS_KIND, PLUGIN_KIND,
    PLAIN_BY_DESIGN, PAGES_RE, HOW_TO_TRUST, HOW_TO_SIGN, HOW_TO_ENCRYPT, PE_PARENT, PE_LAZY, PE_PRESENT,
    CriusecError, FormatError, EncryptedImageError, PrivateKeyError, PolicyError, UntrustedSignerError,
    _need_crypto, _b, _label, _exists, _now, _utc, replace_file, _hex)
from .kdf import (  # noqa: F401
    prk_of, derive)
from .keys import (  # noqa: F401
    fingerprint, _rejection_key, _unwrap, _keys, is_pkcs11_url, _no_pkcs11, load_private_key, default_keys)
from .sign import (  # noqa: F401
    _cert, cert_subject, _ts, _key_name, alg_matches_key, _pss, verify_signature, _ext, _validity_problem,
    _signing_cert_problem, _pem_certs, _read_file, load_signing_key, Signer)
from .trust import (  # noqa: F401
    _cert_signed_by, _issuer_problem, _is_ca, TrustStore)
from .policy import (  # noqa: F401
    Policy)
from .header import (  # noqa: F401
    _recipients, canonical, canonical2, mac_input, header_mac, parent_binding, valid_chunk_size, check_header,
    import_header, recipient_stanza, new_header, _set_parent, seal_header, _one_entry, _image_of, decode_cipher_img,
    encode_cipher_img, read_cipher_img)
from .compress import (  # noqa: F401
    BlockCodec, blocks_encode, blocks_decode)
from .stream import (  # noqa: F401
    stream_key, nonce, _aead, stream_seal, stream_open, is_stream)
from .pages import (  # noqa: F401
    parse_regions, pages_described, page_keys, PageCipher)
from .manifest import (  # noqa: F401
    _check_name, _CONVERSIONS, IMAGE_KINDS, UNSEALED_KINDS, criu_image_name, is_plugin_image_name, name_matches,
    kind_pattern, decode_manifest, encode_manifest,
    pagemap_digest)
from .checkpoint import (  # noqa: F401
    Checkpoint)
