/*
 * AES-256-XTS over gnutls_cipher_*: the page cipher's encryption of each
 * page (page_cipher.cpp).  One handle per key; the tweak is set per data
 * unit.
 */
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

#include "gnutls_raii.h"
#include "status.h"

namespace criusec {

class Xts {
public:
	static constexpr size_t kKeyLen = 64;	/* two AES-256 keys */
	static constexpr size_t kTweakLen = 16; /* data unit number, as IEEE 1619 (little-endian) */

	/* The two key halves must differ (IEEE 1619-2018, FIPS). */
	[[nodiscard]] static Result<Xts> create(std::span<const uint8_t> key);

	/* in.size() == out.size(), a multiple of 16, at least 16 bytes. */
	[[nodiscard]] Status encrypt(std::span<const uint8_t, kTweakLen> tweak, std::span<const uint8_t> in,
				     std::span<uint8_t> out);
	[[nodiscard]] Status decrypt(std::span<const uint8_t, kTweakLen> tweak, std::span<const uint8_t> in,
				     std::span<uint8_t> out);

private:
	explicit Xts(CipherHandle h) noexcept : h_(std::move(h)) {}
	[[nodiscard]] Status run(bool enc, std::span<const uint8_t, kTweakLen> tweak, std::span<const uint8_t> in,
				 std::span<uint8_t> out);
	CipherHandle h_;
};

} /* namespace criusec */
