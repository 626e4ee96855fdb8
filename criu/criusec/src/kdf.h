/*
 * Hashing, HMAC, HKDF and randomness: thin wrappers over GnuTLS
 * (SHA-256 everywhere).
 */
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>

#include "secure_bytes.h"
#include "status.h"

namespace criusec {

constexpr size_t kSha256Len = 32;
using Digest = std::array<uint8_t, kSha256Len>;

[[nodiscard]] Status sha256(std::span<const uint8_t> data, std::span<uint8_t, kSha256Len> out);
[[nodiscard]] Status hmac_sha256(std::span<const uint8_t> key, std::span<const uint8_t> data,
				 std::span<uint8_t, kSha256Len> out);

/* SHA-256 over data given in pieces. */
class Sha256 {
public:
	Sha256();
	Sha256(const Sha256 &) = delete;
	Sha256 &operator=(const Sha256 &) = delete;
	Sha256(Sha256 &&o) noexcept;
	Sha256 &operator=(Sha256 &&o) noexcept;
	~Sha256();
	[[nodiscard]] Status update(std::span<const uint8_t> data);
	[[nodiscard]] Status finish(std::span<uint8_t, kSha256Len> out);

private:
	void *h_ = nullptr; /* gnutls_hash_hd_t */
};

/* RFC 5869 with SHA-256.  The PRK is always 32 bytes. */
[[nodiscard]] Result<SecureBytes> hkdf_extract(std::span<const uint8_t> salt, std::span<const uint8_t> ikm);
[[nodiscard]] Result<SecureBytes> hkdf_expand(std::span<const uint8_t> prk, std::span<const uint8_t> info,
					      size_t len);

/* Key-grade randomness (GNUTLS_RND_KEY). */
[[nodiscard]] Status random_bytes(std::span<uint8_t> out);

/* Constant-time equality (gnutls_memcmp); different lengths are unequal. */
bool ct_equal(std::span<const uint8_t> a, std::span<const uint8_t> b) noexcept;

} /* namespace criusec */
