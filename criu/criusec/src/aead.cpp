#include "aead.h"

#include <cstring>

#if defined(__aarch64__)
#include <asm/hwcap.h>
#include <sys/auxv.h>
#endif

#include <gnutls/crypto.h>

namespace criusec {

namespace {

gnutls_cipher_algorithm_t to_gnutls(AeadAlg alg) noexcept
{
	return alg == AeadAlg::Aes256Gcm ? GNUTLS_CIPHER_AES_256_GCM : GNUTLS_CIPHER_CHACHA20_POLY1305;
}

} /* namespace */

std::optional<AeadAlg> aead_from_wire(uint32_t v) noexcept
{
	switch (v) {
	case CRIUSEC_AEAD_AES_256_GCM:
		return AeadAlg::Aes256Gcm;
	case CRIUSEC_AEAD_CHACHA20_POLY1305:
		return AeadAlg::ChaCha20Poly1305;
	default:
		return std::nullopt;
	}
}

const char *aead_name(AeadAlg alg) noexcept
{
	return alg == AeadAlg::Aes256Gcm ? "aes-256-gcm" : "chacha20-poly1305";
}

AeadAlg default_aead() noexcept
{
	/*
	 * GnuTLS's AES-GCM is ~16x faster than its ChaCha20-Poly1305 with
	 * AES-NI + PCLMUL, and slow (and table-based) without them.
	 */
#if defined(__x86_64__) || defined(__i386__)
	__builtin_cpu_init();
	if (__builtin_cpu_supports("aes") && __builtin_cpu_supports("pclmul"))
		return AeadAlg::Aes256Gcm;
#elif defined(__aarch64__)
	unsigned long hw = getauxval(AT_HWCAP);
	if ((hw & HWCAP_AES) && (hw & HWCAP_PMULL))
		return AeadAlg::Aes256Gcm;
#endif
	return AeadAlg::ChaCha20Poly1305;
}

Result<Aead> Aead::create(AeadAlg alg, std::span<const uint8_t> key)
{
	if (key.size() != kAeadKeyLen)
		return invalid_argument("AEAD key must be 32 bytes");
	gnutls_datum_t k = as_datum(key.data(), key.size());
	AeadHandle h;
	int rc = gnutls_aead_cipher_init(h.out(), to_gnutls(alg), &k);
	if (rc < 0)
		return gnutls_status(aead_name(alg), rc);
	return Aead(alg, std::move(h));
}

Status Aead::seal(std::span<const uint8_t, kAeadNonceLen> nonce, std::span<const uint8_t> aad,
		  std::span<const uint8_t> pt, std::span<uint8_t> out)
{
	if (out.size() != pt.size() + kAeadTagLen)
		return invalid_argument("AEAD seal: output size mismatch");
	size_t out_len = out.size();
	int rc = gnutls_aead_cipher_encrypt(h_.get(), nonce.data(), nonce.size(), aad.data(), aad.size(), kAeadTagLen,
					    pt.data(), pt.size(), out.data(), &out_len);
	if (rc < 0)
		return gnutls_status(aead_name(alg_), rc);
	if (out_len != out.size())
		return Status::error(EIO, "AEAD seal: unexpected output length");
	return {};
}

Status Aead::open(std::span<const uint8_t, kAeadNonceLen> nonce, std::span<const uint8_t> aad,
		  std::span<const uint8_t> ct, std::span<uint8_t> out)
{
	if (ct.size() < kAeadTagLen || out.size() != ct.size() - kAeadTagLen)
		return invalid_argument("AEAD open: size mismatch");
	size_t out_len = out.size();
	int rc = gnutls_aead_cipher_decrypt(h_.get(), nonce.data(), nonce.size(), aad.data(), aad.size(), kAeadTagLen,
					    ct.data(), ct.size(), out.data(), &out_len);
	if (rc == GNUTLS_E_DECRYPTION_FAILED) {
		/* Do not leave unauthenticated plaintext behind, even in our own buffer. */
		if (!out.empty())
			gnutls_memset(out.data(), 0, out.size());
		return bad_data("authentication failed");
	}
	if (rc < 0)
		return gnutls_status(aead_name(alg_), rc);
	if (out_len != out.size())
		return Status::error(EIO, "AEAD open: unexpected output length");
	return {};
}

} /* namespace criusec */
