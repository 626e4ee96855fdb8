/*
 * Known-answer tests through the engine's wrappers.  Every vector was
 * cross-checked with OpenSSL (python3-cryptography) before being written here.
 */
#include <gtest/gtest.h>

#include <array>
#include <string>

#include "aead.h"
#include "bytes.h"
#include "criusec.h"
#include "kat_vectors.h"
#include "kdf.h"
#include "test_util.h"
#include "xts.h"

using namespace criusec;
using criusec::test::hex;

namespace {

std::array<uint8_t, kAeadNonceLen> nonce_of(const std::vector<uint8_t> &v)
{
	std::array<uint8_t, kAeadNonceLen> n{};
	std::copy(v.begin(), v.end(), n.begin());
	return n;
}

struct AeadVector {
	const char *name;
	AeadAlg alg;
	std::vector<uint8_t> key, nonce, aad, pt, ct_tag;
};

AeadVector vector_of(const kat::Aead &k)
{
	auto pt = k.pt_is_text ? std::vector<uint8_t>(k.pt.begin(), k.pt.end()) : hex(k.pt);
	return {k.name.data(), k.alg, hex(k.key), hex(k.nonce), hex(k.aad),
		pt, hex(k.ct_tag)};
}

class AeadKat : public ::testing::TestWithParam<AeadVector> {};

TEST_P(AeadKat, SealMatchesVector)
{
	const auto &v = GetParam();
	auto a = Aead::create(v.alg, v.key);
	ASSERT_TRUE(a.ok()) << a.status().message();
	std::vector<uint8_t> out(v.pt.size() + kAeadTagLen);
	ASSERT_TRUE(a.value().seal(nonce_of(v.nonce), v.aad, v.pt, out).ok());
	EXPECT_EQ(out, v.ct_tag);
}

TEST_P(AeadKat, OpenMatchesVector)
{
	const auto &v = GetParam();
	auto a = Aead::create(v.alg, v.key);
	ASSERT_TRUE(a.ok());
	std::vector<uint8_t> out(v.pt.size());
	ASSERT_TRUE(a.value().open(nonce_of(v.nonce), v.aad, v.ct_tag, out).ok());
	EXPECT_EQ(out, v.pt);
}

TEST_P(AeadKat, RejectsAnyTamperingAndWipesOutput)
{
	const auto &v = GetParam();
	auto a = Aead::create(v.alg, v.key);
	ASSERT_TRUE(a.ok());
	std::vector<uint8_t> out(v.pt.size(), 0xAA);
	/* every byte of ciphertext and tag */
	for (size_t i = 0; i < v.ct_tag.size(); i++) {
		auto ct = v.ct_tag;
		ct[i] ^= 0x01;
		Status s = a.value().open(nonce_of(v.nonce), v.aad, ct, out);
		ASSERT_FALSE(s.ok()) << "byte " << i;
		EXPECT_EQ(s.err(), EBADMSG);
		EXPECT_EQ(out, std::vector<uint8_t>(v.pt.size(), 0)) << "unauthenticated plaintext left behind";
	}
	auto aad = v.aad;
	aad[0] ^= 0x80;
	EXPECT_FALSE(a.value().open(nonce_of(v.nonce), aad, v.ct_tag, out).ok());
	auto nonce = nonce_of(v.nonce);
	nonce[11] ^= 1;
	EXPECT_FALSE(a.value().open(nonce, v.aad, v.ct_tag, out).ok());
	auto key = v.key;
	key[31] ^= 1;
	auto b = Aead::create(v.alg, key);
	ASSERT_TRUE(b.ok());
	EXPECT_FALSE(b.value().open(nonce_of(v.nonce), v.aad, v.ct_tag, out).ok());
}

INSTANTIATE_TEST_SUITE_P(Vectors, AeadKat, ::testing::Values(vector_of(kat::kGcm), vector_of(kat::kChaCha)),
			 [](const auto &info) { return std::string(info.param.alg == AeadAlg::Aes256Gcm ? "Gcm" : "ChaCha"); });

TEST(AeadWrapper, RejectsBadSizes)
{
	std::vector<uint8_t> key(31);
	EXPECT_EQ(Aead::create(AeadAlg::Aes256Gcm, key).status().err(), EINVAL);
	key.resize(32);
	auto a = Aead::create(AeadAlg::Aes256Gcm, key);
	ASSERT_TRUE(a.ok());
	std::array<uint8_t, 12> n{};
	std::vector<uint8_t> pt(10), out(10);
	EXPECT_FALSE(a.value().seal(n, {}, pt, out).ok());
	std::vector<uint8_t> ct(8);
	EXPECT_FALSE(a.value().open(n, {}, ct, out).ok());
}

TEST(AeadWrapper, EmptyPlaintextRoundTrip)
{
	for (auto alg : {AeadAlg::Aes256Gcm, AeadAlg::ChaCha20Poly1305}) {
		std::vector<uint8_t> key(32, 7);
		auto a = Aead::create(alg, key);
		ASSERT_TRUE(a.ok());
		std::array<uint8_t, 12> n{};
		std::vector<uint8_t> tag(16);
		ASSERT_TRUE(a.value().seal(n, as_bytes("aad"), {}, tag).ok());
		std::vector<uint8_t> none;
		EXPECT_TRUE(a.value().open(n, as_bytes("aad"), tag, none).ok());
		EXPECT_FALSE(a.value().open(n, as_bytes("aaD"), tag, none).ok());
	}
}

TEST(Kdf, HkdfRfc5869Case1)
{
	std::vector<uint8_t> ikm(22, 0x0b);
	auto prk = hkdf_extract(hex(kat::kHkdfSalt), ikm);
	ASSERT_TRUE(prk.ok());
	EXPECT_EQ(std::vector<uint8_t>(prk.value().data(), prk.value().data() + prk.value().size()),
		  hex(kat::kHkdfPrk));
	auto okm = hkdf_expand(prk.value().span(), hex(kat::kHkdfInfo), 42);
	ASSERT_TRUE(okm.ok());
	EXPECT_EQ(std::vector<uint8_t>(okm.value().data(), okm.value().data() + okm.value().size()),
		  hex(kat::kHkdfOkm));
}

TEST(Kdf, HkdfExpandLengthLimits)
{
	std::vector<uint8_t> prk(32, 1);
	EXPECT_FALSE(hkdf_expand(prk, {}, 0).ok());
	EXPECT_TRUE(hkdf_expand(prk, {}, 255 * 32).ok());
	EXPECT_FALSE(hkdf_expand(prk, {}, 255 * 32 + 1).ok());
	/* 64 bytes, as the future "criusec v1 pages xts" key will need */
	auto k = hkdf_expand(prk, as_bytes("criusec v1 pages xts"), 64);
	ASSERT_TRUE(k.ok());
	EXPECT_EQ(k.value().size(), 64u);
}

TEST(Kdf, HmacSha256Rfc4231Case2)
{
	Digest d;
	ASSERT_TRUE(hmac_sha256(as_bytes(kat::kHmacKey), as_bytes(kat::kHmacData), d).ok());
	EXPECT_EQ(std::vector<uint8_t>(d.begin(), d.end()), hex(kat::kHmacMac));
}

TEST(Kdf, Sha256Abc)
{
	Digest d;
	ASSERT_TRUE(sha256(as_bytes("abc"), d).ok());
	EXPECT_EQ(std::vector<uint8_t>(d.begin(), d.end()), hex(kat::kSha256Abc));
}

TEST(Kdf, ConstantTimeEqual)
{
	std::vector<uint8_t> a{1, 2, 3}, b{1, 2, 3}, c{1, 2, 4}, d{1, 2};
	EXPECT_TRUE(ct_equal(a, b));
	EXPECT_FALSE(ct_equal(a, c));
	EXPECT_FALSE(ct_equal(a, d));
	EXPECT_TRUE(ct_equal({}, {}));
}

TEST(Kdf, RandomBytesDiffer)
{
	std::array<uint8_t, 32> a{}, b{};
	ASSERT_TRUE(random_bytes(a).ok());
	ASSERT_TRUE(random_bytes(b).ok());
	EXPECT_NE(a, b);
}

using kat::kXtsCt;
using kat::kXtsKey;

std::vector<uint8_t> xts_pt()
{
	std::vector<uint8_t> pt(512);
	for (size_t i = 0; i < pt.size(); i++)
		pt[i] = static_cast<uint8_t>(i);
	return pt;
}

TEST(Xts, Ieee1619Vector10)
{
	auto xts = Xts::create(hex(kXtsKey));
	ASSERT_TRUE(xts.ok()) << xts.status().message();
	std::array<uint8_t, 16> tweak{0xff};
	auto pt = xts_pt();
	std::vector<uint8_t> ct(512), back(512);
	ASSERT_TRUE(xts.value().encrypt(tweak, pt, ct).ok());
	EXPECT_EQ(ct, hex(kXtsCt));
	ASSERT_TRUE(xts.value().decrypt(tweak, ct, back).ok());
	EXPECT_EQ(back, pt);
}

TEST(Xts, TweakChangesCiphertextAndHandleIsReusable)
{
	auto xts = Xts::create(hex(kXtsKey));
	ASSERT_TRUE(xts.ok());
	auto pt = xts_pt();
	std::array<uint8_t, 16> t1{1}, t2{2};
	std::vector<uint8_t> c1(512), c2(512), c1again(512);
	ASSERT_TRUE(xts.value().encrypt(t1, pt, c1).ok());
	ASSERT_TRUE(xts.value().encrypt(t2, pt, c2).ok());
	ASSERT_TRUE(xts.value().encrypt(t1, pt, c1again).ok());
	EXPECT_NE(c1, c2);
	EXPECT_EQ(c1, c1again); /* set_iv really resets the tweak per data unit */
}

TEST(Xts, RejectsBadKeysAndLengths)
{
	EXPECT_EQ(Xts::create(std::vector<uint8_t>(32, 1)).status().err(), EINVAL);
	std::vector<uint8_t> same(64, 0x42);
	EXPECT_EQ(Xts::create(same).status().err(), EINVAL);
	auto xts = Xts::create(hex(kXtsKey));
	ASSERT_TRUE(xts.ok());
	std::array<uint8_t, 16> t{};
	std::vector<uint8_t> a(15), b(15), c(4097), d(4097), e(32), f(16);
	EXPECT_FALSE(xts.value().encrypt(t, a, b).ok());
	EXPECT_FALSE(xts.value().encrypt(t, c, d).ok());
	EXPECT_FALSE(xts.value().encrypt(t, e, f).ok());
}

TEST(SelfTest, ReturnsZero)
{
	EXPECT_EQ(criusec_self_test(), 0) << criusec_last_error();
	EXPECT_STREQ(criusec_last_error(), "");
}

} /* namespace */
