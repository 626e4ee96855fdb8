/*
 * Issue 11's engine pieces: image names a manifest may list, the digest of
 * a pagemap's entries, recipient certificates that are checked, and the
 * unwrap with implicit rejection.
 */
#include <gmp.h>
#include <gtest/gtest.h>

#include <cstring>
#include <ctime>
#include <string>
#include <vector>

#include <sys/wait.h>
#include <unistd.h>

#include "criusec.h"
#include "ctx.h"
#include "secure_bytes.h"
#include "manifest.h"
#include "pki.h"
#include "test_util.h"

using namespace criusec;
using namespace criusec::test;

namespace {

TEST(Names, KindPatterns)
{
	EXPECT_TRUE(name_matches("core-%u.img", "core-1.img"));
	EXPECT_TRUE(name_matches("core-%u.img", "core-4194304.img"));
	EXPECT_TRUE(name_matches("pagemap-%lu.img", "pagemap-123.img"));
	EXPECT_TRUE(name_matches("ghost-file-%x.img", "ghost-file-1f.img"));
	EXPECT_TRUE(name_matches("tmpfs-dev-%u.tar.gz.img", "tmpfs-dev-77.tar.gz.img"));
	EXPECT_TRUE(name_matches("pages-%d.img", "pages--1.img"));
	EXPECT_TRUE(name_matches("inventory.img", "inventory.img"));
	EXPECT_TRUE(name_matches("stats-%s", "stats-dump"));
	EXPECT_TRUE(name_matches("a%%b", "a%b"));

	EXPECT_FALSE(name_matches("core-%u.img", "core-.img"));
	EXPECT_FALSE(name_matches("core-%u.img", "core-1x.img"));
	EXPECT_FALSE(name_matches("core-%u.img", "core--1.img"));
	EXPECT_FALSE(name_matches("core-%u.img", "mm-1.img")); /* another kind */
	EXPECT_FALSE(name_matches("ghost-file-%x.img", "ghost-file-1F.img"));
	EXPECT_FALSE(name_matches("inventory.img", "inventory.img.bak"));
	EXPECT_FALSE(name_matches("core-%z.img", "core-1.img"));
	EXPECT_FALSE(name_matches("core-%", "core-1"));
}

TEST(Names, PathsAreNeverNames)
{
	for (const char *evil : {"../fifo", "/etc/shadow", "..", ".", "a/b", "core-1.img/..", ""})
		for (const char *pat : {"%s", "../fifo", "/etc/shadow", "core-%u.img", "%s%s"})
			EXPECT_FALSE(name_matches(pat, evil)) << pat << " " << evil;
	EXPECT_FALSE(name_matches("%s", std::string(256, 'a')));
	EXPECT_TRUE(name_matches("%s", std::string(255, 'a')));
	EXPECT_EQ(criusec_name_matches("core-%u.img", "core-2.img"), 1);
	EXPECT_EQ(criusec_name_matches("core-%u.img", "../core-2.img"), 0);
	EXPECT_EQ(criusec_name_matches(nullptr, "x"), 0);
}

TEST(Manifest, RulesOfTheWritersKinds)
{
	const criusec_image_kind kinds[] = {
		{ "core-%u.img", "core-%u.img", false },
		{ "pagemap-%lu.img", "pagemap-%lu.img", true },
		{ "plugin", "%s", false },
	};
	uint8_t d[CRIUSEC_DIGEST_LEN] = {};
	auto check = [&](criusec_manifest_entry e, bool v2 = true) {
		return criusec_manifest_check(&e, 1, v2, kinds, std::size(kinds));
	};

	EXPECT_EQ(check({ "core-%u.img", "core-1.img", 10, d, sizeof(d), nullptr, 0 }), 0);
	EXPECT_EQ(check({ "plugin", "amdgpu-kfd-1.img", 10, d, sizeof(d), nullptr, 0 }), 0);
	/* sealed by a page server: no digest, no size, but the digest of its entries */
	EXPECT_EQ(check({ "pagemap-%lu.img", "pagemap-2.img", 0, nullptr, 0, d, sizeof(d) }), 0);
	/* format 1 records no digests */
	EXPECT_EQ(check({ "core-%u.img", "core-1.img", 0, nullptr, 0, nullptr, 0 }, false), 0);

	EXPECT_EQ(check({ "core-%u.img", "../core-1.img", 10, d, sizeof(d), nullptr, 0 }), -EBADMSG);
	EXPECT_STREQ(criusec_last_error(),
		     "cipher-manifest.img: \"../core-1.img\" is not an image name of the kind core-%u.img");
	EXPECT_EQ(check({ "core-%u.img", "mm-1.img", 10, d, sizeof(d), nullptr, 0 }), -EBADMSG);
	EXPECT_EQ(check({ "mm-%u.img", "mm-1.img", 10, d, sizeof(d), nullptr, 0 }), -EBADMSG); /* not a kind */
	EXPECT_EQ(check({ "plugin", "/etc/shadow", 10, d, sizeof(d), nullptr, 0 }), -EBADMSG);
	EXPECT_EQ(check({ "core-%u.img", "core-1.img", 10, d, 5, nullptr, 0 }), -EBADMSG);
	EXPECT_STREQ(criusec_last_error(), "cipher-manifest.img: malformed entry for core-1.img");
	EXPECT_EQ(check({ "core-%u.img", "core-1.img", 10, nullptr, 0, nullptr, 0 }), -EBADMSG); /* size, no digest */
	EXPECT_EQ(check({ "core-%u.img", "core-1.img", 10, d, sizeof(d), d, sizeof(d) }), -EBADMSG); /* not a pagemap */
	EXPECT_EQ(check({ "pagemap-%lu.img", "pagemap-2.img", 0, nullptr, 0, d, 3 }), -EBADMSG);
	EXPECT_EQ(criusec_manifest_check(nullptr, 1, true, kinds, std::size(kinds)), -EINVAL);
}

std::string digest_of(uint64_t id, std::initializer_list<std::array<uint64_t, 3>> entries)
{
	auto *d = criusec_pagemap_digest_new(id);
	for (const auto &e : entries)
		EXPECT_EQ(criusec_pagemap_digest_add(d, e[0], static_cast<uint32_t>(e[1]), static_cast<uint32_t>(e[2])),
			  0);
	uint8_t out[CRIUSEC_DIGEST_LEN];
	EXPECT_EQ(criusec_pagemap_digest_final(d, out), 0);
	return to_hex(out, sizeof(out));
}

TEST(PagemapDigest, CoversIdAndEveryField)
{
	auto base = digest_of(7, {{0x400000, 3, 4}, {0x7f0000, 1, 1}});
	/* "criusec-pagemap-v1" 00 | u64 7 | entries, big-endian (format 10.6) */
	std::vector<uint8_t> canon = hex("637269757365632d706167656d61702d763100"
					 "0000000000000007"
					 "0000000000400000" "00000003" "00000004"
					 "00000000007f0000" "00000001" "00000001");
	Digest want;
	ASSERT_TRUE(sha256(canon, want).ok());
	EXPECT_EQ(base, to_hex(want.data(), want.size()));
	EXPECT_NE(base, digest_of(8, {{0x400000, 3, 4}, {0x7f0000, 1, 1}}));
	EXPECT_NE(base, digest_of(7, {{0x401000, 3, 4}, {0x7f0000, 1, 1}}));
	EXPECT_NE(base, digest_of(7, {{0x400000, 2, 4}, {0x7f0000, 1, 1}}));
	EXPECT_NE(base, digest_of(7, {{0x400000, 3, 5}, {0x7f0000, 1, 1}}));
	EXPECT_NE(base, digest_of(7, {{0x400000, 3, 4}}));
	EXPECT_NE(base, digest_of(7, {{0x7f0000, 1, 1}, {0x400000, 3, 4}}));
	EXPECT_EQ(criusec_pagemap_digest_final(criusec_pagemap_digest_new(1), nullptr), 0); /* only frees */
}

TEST(Recipients, CertificatesAreChecked)
{
	CertSpec ok{.cn = "recipient", .type = PkType::Rsa2048,
		    .key_usage = GNUTLS_KEY_KEY_ENCIPHERMENT | GNUTLS_KEY_DIGITAL_SIGNATURE};
	CertSpec expired = ok, future = ok, sign_only = ok, no_usage = ok;
	expired.cn = "expired";
	expired.not_before = -10 * 86400;
	expired.not_after = -86400;
	future.cn = "future";
	future.not_before = 86400;
	sign_only.cn = "sign-only";
	sign_only.key_usage = GNUTLS_KEY_DIGITAL_SIGNATURE;
	no_usage.cn = "no-usage";
	no_usage.key_usage = 0;
	TempDir d;
	auto write = [&](const CertSpec &s) {
		auto c = make_cert(s);
		std::string path = d.file(s.cn + ".pem");
		FILE *f = fopen(path.c_str(), "w");
		fputs(c.pem.c_str(), f);
		fclose(f);
		return path;
	};
	struct {
		const CertSpec *spec;
		const char *err; /* nullptr: accepted */
	} cases[] = {{&ok, nullptr}, {&no_usage, nullptr}, {&expired, "expired on"}, {&future, "not yet valid"},
		     {&sign_only, "keyUsage lacks keyEncipherment"}};
	for (const auto &c : cases) {
		std::string path = write(*c.spec);
		auto *ctx = criusec_ctx_new(CRIUSEC_AEAD_AES_256_GCM);
		int rc = criusec_ctx_add_recipient(ctx, path.c_str(), 0);
		if (!c.err) {
			EXPECT_EQ(rc, 0) << c.spec->cn << ": " << criusec_last_error();
		} else {
			EXPECT_EQ(rc, -EKEYREJECTED) << c.spec->cn;
			EXPECT_NE(std::string(criusec_last_error()).find(c.err), std::string::npos) << criusec_last_error();
			EXPECT_NE(std::string(criusec_last_error()).find("recipient certificate CN=" + c.spec->cn),
				  std::string::npos)
				<< criusec_last_error();
			/* Labs may take it anyway, explicitly. */
			EXPECT_EQ(criusec_ctx_add_recipient(ctx, path.c_str(), CRIUSEC_RECIPIENT_UNCHECKED), 0)
				<< criusec_last_error();
		}
		criusec_ctx_free(ctx);
	}
}

class Unwrap : public ::testing::Test {
protected:
	void SetUp() override
	{
		auto pem = bytes_of(test_privkey_pem("unwrap", PkType::Rsa2048));
		auto k = privkey_load_pem(pem);
		ASSERT_TRUE(k.ok());
		priv_ = std::move(k).value();
		auto pub = pubkey_from_privkey(priv_);
		ASSERT_TRUE(pub.ok());
		for (size_t i = 0; i < mk_.size(); i++)
			mk_[i] = static_cast<uint8_t>(i * 7);
		auto w = rsa_wrap(pub.value(), mk_);
		ASSERT_TRUE(w.ok());
		wrapped_ = w.value();
	}
	std::array<uint8_t, 32> unwrap(const std::vector<uint8_t> &ct)
	{
		std::array<uint8_t, 32> out{};
		EXPECT_TRUE(rsa_unwrap_implicit(priv_, ct, out).ok());
		return out;
	}
	PrivKey priv_;
	std::array<uint8_t, 32> mk_{};
	std::vector<uint8_t> wrapped_;
};

TEST_F(Unwrap, GenuineKeyComesBack)
{
	EXPECT_EQ(unwrap(wrapped_), mk_);
}

TEST_F(Unwrap, BadPaddingGivesADeterministicSubstitute)
{
	auto bad = wrapped_;
	bad[100] ^= 1;
	auto a = unwrap(bad), b = unwrap(bad);
	EXPECT_EQ(a, b) << "the substitute must depend only on the key and the ciphertext";
	EXPECT_NE(a, mk_);
	auto bad2 = wrapped_;
	bad2[5] ^= 1;
	EXPECT_NE(unwrap(bad2), a);
	/* A wrong length (a key of 31 bytes) is rejected the same way. */
	auto pub = pubkey_from_privkey(priv_);
	auto w31 = rsa_wrap(pub.value(), std::span<const uint8_t>(mk_.data(), 31));
	ASSERT_TRUE(w31.ok());
	auto s31 = unwrap(w31.value());
	EXPECT_NE(std::vector<uint8_t>(s31.begin(), s31.begin() + 31), std::vector<uint8_t>(mk_.begin(), mk_.begin() + 31));
	EXPECT_EQ(s31, unwrap(w31.value()));
}

} /* namespace */

namespace {

/* A page image id is written once per checkpoint, in any process criu forks after the context. */
TEST(PageIds, OncePerCheckpointAcrossForks)
{
	criusec_ctx *ctx = criusec_ctx_new(CRIUSEC_AEAD_AUTO);
	ASSERT_NE(ctx, nullptr);
	EXPECT_EQ(criusec_ctx_claim_pages_id(ctx, 1), 0);
	EXPECT_EQ(criusec_ctx_claim_pages_id(ctx, 0xffffffffu), 0);
	EXPECT_EQ(criusec_ctx_claim_pages_id(ctx, 1), -EEXIST);
	EXPECT_NE(std::string(criusec_last_error()).find("page image 1 twice"), std::string::npos);

	pid_t pid = fork();
	ASSERT_GE(pid, 0);
	if (pid == 0) /* the child claims 2 and sees 1 taken */
		_exit(criusec_ctx_claim_pages_id(ctx, 2) == 0 && criusec_ctx_claim_pages_id(ctx, 1) == -EEXIST ? 0 : 1);
	int status = 0;
	ASSERT_EQ(waitpid(pid, &status, 0), pid);
	EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	EXPECT_EQ(criusec_ctx_claim_pages_id(ctx, 2), -EEXIST); /* the child's claim is seen here */
	EXPECT_EQ(criusec_ctx_claim_pages_id(ctx, 3), 0);

	/* Another checkpoint's ids are its own. */
	criusec_ctx *other = criusec_ctx_new(CRIUSEC_AEAD_AUTO);
	ASSERT_NE(other, nullptr);
	EXPECT_EQ(criusec_ctx_claim_pages_id(other, 1), 0);
	EXPECT_EQ(criusec_ctx_claim_pages_id(nullptr, 1), -EINVAL);
	criusec_ctx_free(other);
	criusec_ctx_free(ctx);
}

} /* namespace */

namespace {

/* Secret memory of CRIU's side's own (fd -1): zeroed, writable, out of core dumps. */
/*
 * libnftables puts its own GMP allocators in on its first context, and
 * criu's kerndat makes one in a CLONE_VM child while a restore's early
 * unwrap runs RSA in a thread: once the wiping ones are in, they stay.
 */
TEST(SecretMemory, BignumScratchStaysWiped)
{
	wipe_bignum_scratch();
	ASSERT_TRUE(bignum_scratch_wiped());
	mp_set_memory_functions(nullptr, nullptr, nullptr);
	EXPECT_TRUE(bignum_scratch_wiped());
	mpz_t n;
	mpz_init_set_ui(n, 12345);
	mpz_mul(n, n, n);
	EXPECT_EQ(mpz_get_ui(n), 12345ul * 12345ul);
	mpz_clear(n);
}

TEST(SecretMemory, AnonymousBuffers)
{
	auto *p = static_cast<uint8_t *>(criusec_secret_map(-1, 5000));
	ASSERT_NE(p, nullptr);
	EXPECT_EQ(p[0], 0);
	EXPECT_EQ(p[4999], 0);
	std::memset(p, 0xa5, 5000);
	criusec_secret_unmap(p, 5000);
	criusec_secret_unmap(nullptr, 10); /* nothing to do */
}

} /* namespace */

namespace {

/*
 * A freed secret's pages may serve the next one of the same size (a pool
 * spares the mmap, mlock and munmap per image), but only wiped: every new
 * SecureBytes reads as zeros, whatever the last one held.
 */
TEST(SecretMemory, ReusedPagesComeBackZeroed)
{
	const uint8_t *first = nullptr;
	for (int i = 0; i < 8; i++) {
		criusec::SecureBytes b(5000);
		ASSERT_EQ(b.size(), 5000u);
		for (size_t j = 0; j < b.size(); j++)
			ASSERT_EQ(b.data()[j], 0) << "round " << i << " byte " << j;
		std::memset(b.data(), 0xa5, b.size());
		if (i == 0)
			first = b.data();
		else
			EXPECT_EQ(b.data(), first) << "the pool should hand back the same pages";
	}
	/* Many at once: more than the pool keeps, all distinct and zeroed. */
	std::vector<criusec::SecureBytes> many;
	for (int i = 0; i < 100; i++) {
		many.emplace_back(64 * 1024);
		ASSERT_EQ(many.back().data()[64 * 1024 - 1], 0);
		std::memset(many.back().data(), i, 64 * 1024);
	}
	many.clear();
	criusec::SecureBytes again(64 * 1024);
	for (size_t j = 0; j < again.size(); j += 511)
		ASSERT_EQ(again.data()[j], 0);
}

} /* namespace */
