/* The C API's small functions and its error conventions. */
#include <gtest/gtest.h>

#include <cstring>
#include <fstream>
#include <string>
#include <thread>

#include "criusec.h"
#include "test_util.h"

/* tests/c_abi.c: calls made from C, where any int is a valid enum value. */
extern "C" const char *c_aead_name_raw(int v);
extern "C" struct criusec_ctx *c_ctx_new_raw(int v);
extern "C" size_t c_sizeof_header(void);

namespace {

TEST(Capi, Version)
{
	ASSERT_NE(criusec_version(), nullptr);
	EXPECT_NE(std::string(criusec_version()).find("criusec"), std::string::npos);
}

TEST(Capi, AeadNamesAndParse)
{
	EXPECT_STREQ(criusec_aead_name(CRIUSEC_AEAD_AES_256_GCM), "aes-256-gcm");
	EXPECT_STREQ(criusec_aead_name(CRIUSEC_AEAD_CHACHA20_POLY1305), "chacha20-poly1305");
	EXPECT_STREQ(criusec_aead_name(CRIUSEC_AEAD_AUTO), "auto");
	EXPECT_STREQ(c_aead_name_raw(9), "unknown");
	EXPECT_STREQ(c_aead_name_raw(-1), "unknown");

	criusec_aead a = CRIUSEC_AEAD_AUTO;
	EXPECT_EQ(criusec_aead_parse("aes-256-gcm", &a), 0);
	EXPECT_EQ(a, CRIUSEC_AEAD_AES_256_GCM);
	EXPECT_EQ(criusec_aead_parse("chacha20-poly1305", &a), 0);
	EXPECT_EQ(a, CRIUSEC_AEAD_CHACHA20_POLY1305);
	EXPECT_EQ(criusec_aead_parse("auto", &a), 0);
	EXPECT_EQ(a, CRIUSEC_AEAD_AUTO);
	EXPECT_EQ(criusec_aead_parse("aes-128-gcm", &a), -EINVAL);
	EXPECT_NE(std::string(criusec_last_error()).find("aes-128-gcm"), std::string::npos);
	EXPECT_EQ(criusec_aead_parse(nullptr, &a), -EINVAL);
	EXPECT_EQ(criusec_aead_parse("auto", nullptr), -EINVAL);
}

TEST(Capi, DefaultAeadFollowsCpuFlags)
{
	std::ifstream f("/proc/cpuinfo");
	std::string line;
	bool aes = false, pclmul = false, seen = false;
	while (std::getline(f, line))
		if (line.rfind("flags", 0) == 0) {
			seen = true;
			aes = line.find(" aes") != std::string::npos;
			pclmul = line.find(" pclmulqdq") != std::string::npos;
			break;
		}
	if (!seen)
		GTEST_SKIP() << "no x86 flags in /proc/cpuinfo";
	EXPECT_EQ(criusec_default_aead(),
		  aes && pclmul ? CRIUSEC_AEAD_AES_256_GCM : CRIUSEC_AEAD_CHACHA20_POLY1305);
}

TEST(Capi, CtxNew)
{
	auto *c = criusec_ctx_new(CRIUSEC_AEAD_AUTO);
	ASSERT_NE(c, nullptr);
	EXPECT_EQ(criusec_ctx_aead(c), criusec_default_aead());
	auto *d = criusec_ctx_new(CRIUSEC_AEAD_CHACHA20_POLY1305);
	ASSERT_NE(d, nullptr);
	EXPECT_EQ(criusec_ctx_aead(d), CRIUSEC_AEAD_CHACHA20_POLY1305);
	EXPECT_NE(std::memcmp(criusec_ctx_id(c), criusec_ctx_id(d), CRIUSEC_ID_LEN), 0);
	criusec_ctx_free(c);
	criusec_ctx_free(d);
	criusec_ctx_free(nullptr);

	EXPECT_EQ(c_ctx_new_raw(7), nullptr);
	EXPECT_NE(std::string(criusec_last_error()).find("unknown AEAD"), std::string::npos);
	EXPECT_EQ(criusec_ctx_id(nullptr), nullptr);
	EXPECT_EQ(criusec_ctx_aead(nullptr), CRIUSEC_AEAD_AUTO);
}

TEST(Capi, LastErrorIsClearedBySuccessAndPerThread)
{
	criusec_aead a;
	EXPECT_LT(criusec_aead_parse("nope", &a), 0);
	EXPECT_STRNE(criusec_last_error(), "");
	std::string other;
	std::thread([&] { other = criusec_last_error(); }).join();
	EXPECT_EQ(other, "");
	EXPECT_EQ(criusec_aead_parse("auto", &a), 0);
	EXPECT_STREQ(criusec_last_error(), "");
}

/* Each layer adds its context once: a missing file is named once, not per layer. */
TEST(Capi, MissingSigningFilesAreNamedOnce)
{
	const auto &pair = criusec::test::test_key("named-once", 2048);
	const std::string missing = "/nonexistent/signing.pem";
	for (bool key_missing : {true, false}) {
		EXPECT_EQ(criusec_signer_load(key_missing ? missing.c_str() : pair.key.c_str(),
					      key_missing ? pair.cert.c_str() : missing.c_str()),
			  nullptr);
		std::string err = criusec_last_error();
		auto at = err.find(missing);
		ASSERT_NE(at, std::string::npos) << err;
		EXPECT_EQ(err.find(missing, at + 1), std::string::npos) << "named twice: " << err;
		EXPECT_NE(err.find("No such file"), std::string::npos) << err;
	}
}

TEST(Capi, HeaderIsUsableFromC)
{
	EXPECT_EQ(c_sizeof_header(), sizeof(criusec_header));
}

TEST(Capi, SelfTest)
{
	EXPECT_EQ(criusec_self_test(), 0) << criusec_last_error();
}

} /* namespace */
