/* Known-answer tests of every primitive (vectors in kat_vectors.h). */
#include "selftest.h"

#include <cstring>
#include <string>
#include <string_view>
#include <vector>

#include "aead.h"
#include "bytes.h"
#include "kat_vectors.h"
#include "kdf.h"
#include "xts.h"

namespace criusec {

namespace {

std::vector<uint8_t> hex(std::string_view s)
{
	auto nib = [](char c) -> uint8_t {
		if (c >= '0' && c <= '9')
			return static_cast<uint8_t>(c - '0');
		return static_cast<uint8_t>((c | 0x20) - 'a' + 10);
	};
	std::vector<uint8_t> v;
	v.reserve(s.size() / 2);
	for (size_t i = 0; i + 1 < s.size(); i += 2)
		v.push_back(static_cast<uint8_t>(nib(s[i]) << 4 | nib(s[i + 1])));
	return v;
}

Status fail(const char *what)
{
	return Status::error(EIO, std::string("self-test failed: ") + what);
}

Status aead_kat(const kat::Aead &v)
{
	const char *what = v.name.data();
	auto k = hex(v.key), n = hex(v.nonce), a = hex(v.aad), expect = hex(v.ct_tag);
	auto pt = v.pt_is_text ? std::vector<uint8_t>(v.pt.begin(), v.pt.end()) : hex(v.pt);
	auto aead = Aead::create(v.alg, k);
	if (!aead.ok())
		return fail(what);
	std::vector<uint8_t> ct(pt.size() + kAeadTagLen);
	auto nn = std::span<const uint8_t, kAeadNonceLen>(n.data(), kAeadNonceLen);
	if (!aead.value().seal(nn, a, pt, ct).ok() || ct != expect)
		return fail(what);
	std::vector<uint8_t> back(pt.size());
	if (!aead.value().open(nn, a, ct, back).ok() || back != pt)
		return fail(what);
	/* A flipped tag bit must be refused. */
	ct.back() ^= 1;
	if (aead.value().open(nn, a, ct, back).ok())
		return fail(what);
	return {};
}

} /* namespace */

Status self_test()
{
	CRIUSEC_TRY(aead_kat(kat::kGcm));
	CRIUSEC_TRY(aead_kat(kat::kChaCha));
	{
		std::vector<uint8_t> ikm(22, 0x0b);
		auto prk = hkdf_extract(hex(kat::kHkdfSalt), ikm);
		if (!prk.ok() || !ct_equal(prk.value().span(), hex(kat::kHkdfPrk)))
			return fail("HKDF-Extract");
		auto okm = hkdf_expand(prk.value().span(), hex(kat::kHkdfInfo), 42);
		if (!okm.ok() || !ct_equal(okm.value().span(), hex(kat::kHkdfOkm)))
			return fail("HKDF-Expand");
	}
	{
		Digest d;
		if (!hmac_sha256(as_bytes(kat::kHmacKey), as_bytes(kat::kHmacData), d).ok() ||
		    !ct_equal(d, hex(kat::kHmacMac)))
			return fail("HMAC-SHA256");
		if (!sha256(as_bytes("abc"), d).ok() || !ct_equal(d, hex(kat::kSha256Abc)))
			return fail("SHA-256");
	}
	{
		std::array<uint8_t, Xts::kTweakLen> tweak{0xff};
		std::vector<uint8_t> pt(512);
		for (size_t i = 0; i < pt.size(); i++)
			pt[i] = static_cast<uint8_t>(i);
		auto xts = Xts::create(hex(kat::kXtsKey));
		if (!xts.ok())
			return fail("AES-256-XTS");
		std::vector<uint8_t> ct(512), back(512);
		if (!xts.value().encrypt(tweak, pt, ct).ok() || ct != hex(kat::kXtsCt))
			return fail("AES-256-XTS");
		if (!xts.value().decrypt(tweak, ct, back).ok() || back != pt)
			return fail("AES-256-XTS");
	}
	return {};
}

} /* namespace criusec */
