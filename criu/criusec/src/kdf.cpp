#include "kdf.h"

#include <utility>

#include <gnutls/crypto.h>

#include "gnutls_raii.h"

namespace criusec {

Status sha256(std::span<const uint8_t> data, std::span<uint8_t, kSha256Len> out)
{
	int rc = gnutls_hash_fast(GNUTLS_DIG_SHA256, data.data(), data.size(), out.data());
	if (rc < 0)
		return gnutls_status("SHA-256", rc);
	return {};
}

Sha256::Sha256()
{
	gnutls_hash_hd_t h;
	if (gnutls_hash_init(&h, GNUTLS_DIG_SHA256) == 0)
		h_ = h;
}

Sha256::Sha256(Sha256 &&o) noexcept : h_(std::exchange(o.h_, nullptr)) {}

Sha256 &Sha256::operator=(Sha256 &&o) noexcept
{
	if (this != &o) {
		if (h_)
			gnutls_hash_deinit(static_cast<gnutls_hash_hd_t>(h_), nullptr);
		h_ = std::exchange(o.h_, nullptr);
	}
	return *this;
}

Sha256::~Sha256()
{
	if (h_)
		gnutls_hash_deinit(static_cast<gnutls_hash_hd_t>(h_), nullptr);
}

Status Sha256::update(std::span<const uint8_t> data)
{
	if (!h_)
		return Status::error(EIO, "SHA-256: no hash context");
	int rc = gnutls_hash(static_cast<gnutls_hash_hd_t>(h_), data.data(), data.size());
	if (rc < 0)
		return gnutls_status("SHA-256", rc);
	return {};
}

Status Sha256::finish(std::span<uint8_t, kSha256Len> out)
{
	if (!h_)
		return Status::error(EIO, "SHA-256: no hash context");
	gnutls_hash_deinit(static_cast<gnutls_hash_hd_t>(std::exchange(h_, nullptr)), out.data());
	return {};
}

Status hmac_sha256(std::span<const uint8_t> key, std::span<const uint8_t> data, std::span<uint8_t, kSha256Len> out)
{
	int rc = gnutls_hmac_fast(GNUTLS_MAC_SHA256, key.data(), key.size(), data.data(), data.size(), out.data());
	if (rc < 0)
		return gnutls_status("HMAC-SHA256", rc);
	return {};
}

Result<SecureBytes> hkdf_extract(std::span<const uint8_t> salt, std::span<const uint8_t> ikm)
{
	SecureBytes prk(kSha256Len);
	gnutls_datum_t k = as_datum(ikm.data(), ikm.size());
	gnutls_datum_t s = as_datum(salt.data(), salt.size());
	int rc = gnutls_hkdf_extract(GNUTLS_MAC_SHA256, &k, &s, prk.data());
	if (rc < 0)
		return gnutls_status("HKDF-Extract", rc);
	return prk;
}

Result<SecureBytes> hkdf_expand(std::span<const uint8_t> prk, std::span<const uint8_t> info, size_t len)
{
	/* RFC 5869: at most 255 blocks of output. */
	if (len == 0 || len > 255 * kSha256Len)
		return invalid_argument("HKDF-Expand: invalid output length");
	SecureBytes okm(len);
	gnutls_datum_t k = as_datum(prk.data(), prk.size());
	gnutls_datum_t i = as_datum(info.data(), info.size());
	int rc = gnutls_hkdf_expand(GNUTLS_MAC_SHA256, &k, &i, okm.data(), len);
	if (rc < 0)
		return gnutls_status("HKDF-Expand", rc);
	return okm;
}

Status random_bytes(std::span<uint8_t> out)
{
	if (out.empty())
		return {};
	int rc = gnutls_rnd(GNUTLS_RND_KEY, out.data(), out.size());
	if (rc < 0)
		return gnutls_status("random generator", rc);
	return {};
}

bool ct_equal(std::span<const uint8_t> a, std::span<const uint8_t> b) noexcept
{
	if (a.size() != b.size())
		return false;
	return gnutls_memcmp(a.data(), b.data(), a.size()) == 0;
}

} /* namespace criusec */
