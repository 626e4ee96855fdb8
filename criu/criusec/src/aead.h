/*
 * AEAD wrapper over gnutls_aead_cipher_*: AES-256-GCM or ChaCha20-Poly1305,
 * 32-byte key, 12-byte nonce, 16-byte tag appended to the ciphertext.
 */
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>

#include "criusec.h"
#include "gnutls_raii.h"
#include "status.h"

namespace criusec {

/* Values are the format's (criusec.h enum criusec_aead). */
enum class AeadAlg : uint8_t {
	Aes256Gcm = CRIUSEC_AEAD_AES_256_GCM,
	ChaCha20Poly1305 = CRIUSEC_AEAD_CHACHA20_POLY1305,
};

constexpr size_t kAeadKeyLen = 32;
constexpr size_t kAeadNonceLen = 12;
constexpr size_t kAeadTagLen = 16;

/* The AEAD for a wire value, or nullopt if unknown (0 = "auto" is not a wire value). */
std::optional<AeadAlg> aead_from_wire(uint32_t v) noexcept;
const char *aead_name(AeadAlg alg) noexcept;
/* AES-GCM where AES-NI and carry-less multiply exist, else ChaCha20-Poly1305. */
AeadAlg default_aead() noexcept;

class Aead {
public:
	[[nodiscard]] static Result<Aead> create(AeadAlg alg, std::span<const uint8_t> key);

	AeadAlg alg() const noexcept { return alg_; }

	/* out.size() must be pt.size() + kAeadTagLen: ciphertext then tag. */
	[[nodiscard]] Status seal(std::span<const uint8_t, kAeadNonceLen> nonce, std::span<const uint8_t> aad,
				  std::span<const uint8_t> pt, std::span<uint8_t> out);
	/*
	 * ct is ciphertext then tag; out.size() must be ct.size() - kAeadTagLen.
	 * On failure (EBADMSG "authentication failed") out holds no plaintext.
	 */
	[[nodiscard]] Status open(std::span<const uint8_t, kAeadNonceLen> nonce, std::span<const uint8_t> aad,
				  std::span<const uint8_t> ct, std::span<uint8_t> out);

private:
	Aead(AeadAlg alg, AeadHandle h) noexcept : alg_(alg), h_(std::move(h)) {}
	AeadAlg alg_;
	AeadHandle h_;
};

} /* namespace criusec */
