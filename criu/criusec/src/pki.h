/*
 * Recipient keys: X.509 certificates and private keys (PEM), their
 * fingerprints, and RSA key wrapping.
 */
#pragma once

#include <array>
#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

#include "gnutls_raii.h"
#include "status.h"

namespace criusec {

constexpr size_t kFprLen = 32;
using Fingerprint = std::array<uint8_t, kFprLen>;

/* Smallest RSA modulus accepted for a new recipient. */
constexpr unsigned kMinRsaBits = 2048;

/* The RSA public key of the first certificate in a PEM buffer. */
[[nodiscard]] Result<PubKey> pubkey_from_cert_pem(std::span<const uint8_t> pem);
/*
 * The PEM loader of load_private_key(): any key GnuTLS reads from
 * unencrypted PEM, i.e. RSA (PKCS#1 or PKCS#8), EC (SEC1 or PKCS#8) and
 * Ed25519 (PKCS#8).  Whether the type suits its use is the caller's check
 * (Signer::create, require_rsa).
 */
[[nodiscard]] Result<PrivKey> privkey_load_pem(std::span<const uint8_t> pem);
/* Recipients are RSA only: unwrapping needs an RSA private key. */
[[nodiscard]] Status require_rsa(const PrivKey &priv);
/* An unencrypted RSA private key, PKCS#1 or PKCS#8 PEM. */
[[nodiscard]] Result<PrivKey> privkey_from_pem(std::span<const uint8_t> pem);
[[nodiscard]] Result<PubKey> pubkey_from_privkey(const PrivKey &priv);
/*
 * A private key by reference, the one place keys are loaded from, for
 * signing and unwrapping alike: a PEM file path, or a PKCS#11 URL
 * ("pkcs11:...", pkcs11.h), whose key stays in its token.  Any key type
 * (signing keys may be EC or Ed25519).
 */
[[nodiscard]] Result<PrivKey> load_private_key(std::string_view ref);

/* SHA-256 over the DER SubjectPublicKeyInfo. */
[[nodiscard]] Result<Fingerprint> fingerprint(const PubKey &pub);

/* RSA PKCS#1 v1.5 encryption of a key. */
[[nodiscard]] Result<std::vector<uint8_t>> rsa_wrap(const PubKey &pub, std::span<const uint8_t> key);
/*
 * Unwrap with implicit rejection (Documentation/criusec-format.md, 3.4
 * step 6): out is the wrapped key when it unwraps to exactly out.size()
 * bytes, else a substitute that only the private key determines, HMAC of
 * the ciphertext under a rejection key.  Both are always computed and one
 * is selected without a branch, so a bad padding looks and takes the same
 * as a good one; only a later MAC check tells them apart.  Fails only when
 * the rejection key cannot be made.  Uses gnutls_privkey_decrypt_data2,
 * GnuTLS's side-channel-hardened fixed-length variant (for a token key,
 * GnuTLS 3.7.9 does C_Decrypt in the token, then the same fixed-length
 * copy; a token's CKR_ENCRYPTED_DATA_INVALID is a failure like any other).
 */
[[nodiscard]] Status rsa_unwrap_implicit(const PrivKey &priv, std::span<const uint8_t> wrapped,
					 std::span<uint8_t> out);

} /* namespace criusec */
