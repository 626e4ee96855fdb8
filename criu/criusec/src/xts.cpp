#include "xts.h"

#include "kdf.h"

namespace criusec {

Result<Xts> Xts::create(std::span<const uint8_t> key)
{
	if (key.size() != kKeyLen)
		return invalid_argument("XTS key must be 64 bytes");
	if (ct_equal(key.first(kKeyLen / 2), key.last(kKeyLen / 2)))
		return invalid_argument("XTS key halves must differ");
	gnutls_datum_t k = as_datum(key.data(), key.size());
	uint8_t zero_iv[kTweakLen] = {};
	gnutls_datum_t iv = as_datum(zero_iv, sizeof(zero_iv));
	CipherHandle h;
	int rc = gnutls_cipher_init(h.out(), GNUTLS_CIPHER_AES_256_XTS, &k, &iv);
	if (rc < 0)
		return gnutls_status("AES-256-XTS", rc);
	return Xts(std::move(h));
}

Status Xts::run(bool enc, std::span<const uint8_t, kTweakLen> tweak, std::span<const uint8_t> in,
		std::span<uint8_t> out)
{
	if (in.size() != out.size() || in.size() < 16 || in.size() % 16)
		return invalid_argument("XTS: data must be a non-empty multiple of 16 bytes");
	gnutls_cipher_set_iv(h_.get(), const_cast<uint8_t *>(tweak.data()), tweak.size());
	int rc = enc ? gnutls_cipher_encrypt2(h_.get(), in.data(), in.size(), out.data(), out.size())
		     : gnutls_cipher_decrypt2(h_.get(), in.data(), in.size(), out.data(), out.size());
	if (rc < 0)
		return gnutls_status("AES-256-XTS", rc);
	return {};
}

Status Xts::encrypt(std::span<const uint8_t, kTweakLen> tweak, std::span<const uint8_t> in, std::span<uint8_t> out)
{
	return run(true, tweak, in, out);
}

Status Xts::decrypt(std::span<const uint8_t, kTweakLen> tweak, std::span<const uint8_t> in, std::span<uint8_t> out)
{
	return run(false, tweak, in, out);
}

} /* namespace criusec */
