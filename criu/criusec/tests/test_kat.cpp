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

AeadVector gcm_vector()
{
	/* McGrew & Viega, "The Galois/Counter Mode of Operation", test case 16 (AES-256, 60-byte PT, AAD). */
	return {"AES-256-GCM",
		AeadAlg::Aes256Gcm,
		hex("feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308"),
		hex("cafebabefacedbaddecaf888"),
		hex("feedfacedeadbeeffeedfacedeadbeefabaddad2"),
		hex("d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72"
		    "1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39"),
		hex("522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa"
		    "8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662"
		    "76fc6ece0f4e1768cddf8853bb2d551b")};
}

AeadVector chacha_vector()
{
	/* RFC 8439, section 2.8.2. */
	std::string pt = "Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the "
			 "future, sunscreen would be it.";
	return {"ChaCha20-Poly1305",
		AeadAlg::ChaCha20Poly1305,
		hex("808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f"),
		hex("070000004041424344454647"),
		hex("50515253c0c1c2c3c4c5c6c7"),
		std::vector<uint8_t>(pt.begin(), pt.end()),
		hex("d31a8d34648e60db7b86afbc53ef7ec2a4aded51296e08fea9e2b5a736ee62d6"
		    "3dbea45e8ca9671282fafb69da92728b1a71de0a9e060b2905d6a5b67ecd3b36"
		    "92ddbd7f2d778b8c9803aee328091b58fab324e4fad675945585808b4831d7bc"
		    "3ff4def08e4b7a9de576d26586cec64b6116"
		    "1ae10b594f09e26a7e902ecbd0600691")};
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

INSTANTIATE_TEST_SUITE_P(Vectors, AeadKat, ::testing::Values(gcm_vector(), chacha_vector()),
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
	auto prk = hkdf_extract(hex("000102030405060708090a0b0c"), ikm);
	ASSERT_TRUE(prk.ok());
	EXPECT_EQ(std::vector<uint8_t>(prk.value().data(), prk.value().data() + prk.value().size()),
		  hex("077709362c2e32df0ddc3f0dc47bba6390b6c73bb50f9c3122ec844ad7c2b3e5"));
	auto okm = hkdf_expand(prk.value().span(), hex("f0f1f2f3f4f5f6f7f8f9"), 42);
	ASSERT_TRUE(okm.ok());
	EXPECT_EQ(std::vector<uint8_t>(okm.value().data(), okm.value().data() + okm.value().size()),
		  hex("3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"));
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
	ASSERT_TRUE(hmac_sha256(as_bytes("Jefe"), as_bytes("what do ya want for nothing?"), d).ok());
	EXPECT_EQ(std::vector<uint8_t>(d.begin(), d.end()),
		  hex("5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"));
}

TEST(Kdf, Sha256Abc)
{
	Digest d;
	ASSERT_TRUE(sha256(as_bytes("abc"), d).ok());
	EXPECT_EQ(std::vector<uint8_t>(d.begin(), d.end()),
		  hex("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"));
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

/* IEEE 1619-2007 XTS-AES-256 vector 10: data unit 0xff, 512 bytes 00..ff 00..ff. */
const char *kXtsKey = "2718281828459045235360287471352662497757247093699959574966967627"
		      "3141592653589793238462643383279502884197169399375105820974944592";
const char *kXtsCt = "1c3b3a102f770386e4836c99e370cf9bea00803f5e482357a4ae12d414a3e63b"
		     "5d31e276f8fe4a8d66b317f9ac683f44680a86ac35adfc3345befecb4bb188fd"
		     "5776926c49a3095eb108fd1098baec70aaa66999a72a82f27d848b21d4a741b0"
		     "c5cd4d5fff9dac89aeba122961d03a757123e9870f8acf1000020887891429ca"
		     "2a3e7a7d7df7b10355165c8b9a6d0a7de8b062c4500dc4cd120c0f7418dae3d0"
		     "b5781c34803fa75421c790dfe1de1834f280d7667b327f6c8cd7557e12ac3a0f"
		     "93ec05c52e0493ef31a12d3d9260f79a289d6a379bc70c50841473d1a8cc81ec"
		     "583e9645e07b8d9670655ba5bbcfecc6dc3966380ad8fecb17b6ba02469a020a"
		     "84e18e8f84252070c13e9f1f289be54fbc481457778f616015e1327a02b140f1"
		     "505eb309326d68378f8374595c849d84f4c333ec4423885143cb47bd71c5edae"
		     "9be69a2ffeceb1bec9de244fbe15992b11b77c040f12bd8f6a975a44a0f90c29"
		     "a9abc3d4d893927284c58754cce294529f8614dcd2aba991925fedc4ae74ffac"
		     "6e333b93eb4aff0479da9a410e4450e0dd7ae4c6e2910900575da401fc07059f"
		     "645e8b7e9bfdef33943054ff84011493c27b3429eaedb4ed5376441a77ed4385"
		     "1ad77f16f541dfd269d50d6a5f14fb0aab1cbb4c1550be97f7ab4066193c4caa"
		     "773dad38014bd2092fa755c824bb5e54c4f36ffda9fcea70b9c6e693e148c151";

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
