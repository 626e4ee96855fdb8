/*
 * Known-answer vectors, shared by the self-test (criu check) and the unit
 * tests.  Each was cross-checked with OpenSSL (python3-cryptography) when
 * it was written here.
 */
#pragma once

#include <string_view>

#include "aead.h"

namespace criusec::kat {

struct Aead {
	std::string_view name;
	AeadAlg alg;
	std::string_view key, nonce, aad; /* hex */
	std::string_view pt;		  /* hex, or text when pt_is_text */
	bool pt_is_text;
	std::string_view ct_tag; /* hex */
};

/* McGrew & Viega, "The Galois/Counter Mode of Operation", test case 16 (AES-256, 60-byte PT, AAD). */
inline constexpr Aead kGcm{
	"AES-256-GCM",
	AeadAlg::Aes256Gcm,
	"feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308",
	"cafebabefacedbaddecaf888",
	"feedfacedeadbeeffeedfacedeadbeefabaddad2",
	"d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72"
	"1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39",
	false,
	"522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa"
	"8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662"
	"76fc6ece0f4e1768cddf8853bb2d551b",
};

/* RFC 8439, section 2.8.2. */
inline constexpr Aead kChaCha{
	"ChaCha20-Poly1305",
	AeadAlg::ChaCha20Poly1305,
	"808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f",
	"070000004041424344454647",
	"50515253c0c1c2c3c4c5c6c7",
	"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, sunscreen "
	"would be it.",
	true,
	"d31a8d34648e60db7b86afbc53ef7ec2a4aded51296e08fea9e2b5a736ee62d6"
	"3dbea45e8ca9671282fafb69da92728b1a71de0a9e060b2905d6a5b67ecd3b36"
	"92ddbd7f2d778b8c9803aee328091b58fab324e4fad675945585808b4831d7bc"
	"3ff4def08e4b7a9de576d26586cec64b6116"
	"1ae10b594f09e26a7e902ecbd0600691",
};

/* RFC 5869 test case 1: IKM is 22 bytes of 0x0b. */
inline constexpr std::string_view kHkdfSalt = "000102030405060708090a0b0c";
inline constexpr std::string_view kHkdfInfo = "f0f1f2f3f4f5f6f7f8f9";
inline constexpr std::string_view kHkdfPrk = "077709362c2e32df0ddc3f0dc47bba6390b6c73bb50f9c3122ec844ad7c2b3e5";
inline constexpr std::string_view kHkdfOkm = "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf"
					     "34007208d5b887185865";

/* RFC 4231 test case 2. */
inline constexpr std::string_view kHmacKey = "Jefe";
inline constexpr std::string_view kHmacData = "what do ya want for nothing?";
inline constexpr std::string_view kHmacMac = "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843";

/* FIPS 180-2, "abc". */
inline constexpr std::string_view kSha256Abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

/* IEEE 1619-2007 XTS-AES-256 vector 10: data unit 0xff, 512 bytes 00..ff 00..ff. */
inline constexpr std::string_view kXtsKey = "2718281828459045235360287471352662497757247093699959574966967627"
					    "3141592653589793238462643383279502884197169399375105820974944592";
inline constexpr std::string_view kXtsCt = "1c3b3a102f770386e4836c99e370cf9bea00803f5e482357a4ae12d414a3e63b"
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

} /* namespace criusec::kat */
