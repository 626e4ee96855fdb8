/* cipher.img header: recipients, key wrapping, the header MAC. */
#include <gtest/gtest.h>

#include <cstdio>
#include <cstring>
#include <functional>
#include <memory>
#include <string>

#include "criusec.h"
#include "test_util.h"

using namespace criusec::test;

namespace {

using CtxPtr = std::unique_ptr<criusec_ctx, decltype(&criusec_ctx_free)>;

CtxPtr own(criusec_ctx *c)
{
	return CtxPtr(c, criusec_ctx_free);
}

class Header : public ::testing::Test {
protected:
	static void SetUpTestSuite()
	{
		/* RSA-2048 PKCS#1, RSA-3072 PKCS#8, RSA-2048; and one that is never a recipient. */
		k1_ = &test_key("r1", 2048);
		k2_ = &test_key("r2", 3072, KeyType::Rsa, true);
		k3_ = &test_key("r3", 2048);
		outsider_ = &test_key("outsider", 2048);
	}

	CtxPtr make(std::initializer_list<const KeyFiles *> keys, criusec_aead aead = CRIUSEC_AEAD_AES_256_GCM,
		    const uint8_t *parent = nullptr)
	{
		auto c = own(criusec_ctx_new(aead, parent));
		EXPECT_TRUE(c) << criusec_last_error();
		for (auto *k : keys)
			EXPECT_EQ(criusec_ctx_add_recipient(c.get(), k->cert.c_str()), 0) << criusec_last_error();
		return c;
	}

	static criusec_header exported(criusec_ctx *c)
	{
		criusec_header h;
		EXPECT_EQ(criusec_ctx_export(c, &h), 0) << criusec_last_error();
		return h;
	}

	/* Imports, and if it works, proves the master key is the same by opening a stream. */
	static void expect_imports(criusec_ctx *orig, const criusec_header &h, const KeyFiles &k)
	{
		auto c = own(criusec_ctx_import(&h, k.key.c_str()));
		ASSERT_TRUE(c) << criusec_last_error();
		EXPECT_EQ(std::memcmp(criusec_ctx_id(c.get()), criusec_ctx_id(orig), CRIUSEC_ID_LEN), 0);
		EXPECT_EQ(criusec_ctx_aead(c.get()), criusec_ctx_aead(orig));
		const char msg[] = "registers and memory";
		uint8_t *st = nullptr, *pt = nullptr;
		size_t st_len = 0, pt_len = 0;
		ASSERT_EQ(criusec_stream_seal_buf(orig, "core", "core-1.img", msg, sizeof(msg), &st, &st_len), 0);
		ASSERT_EQ(criusec_stream_open_buf(c.get(), "core", "core-1.img", st, st_len, &pt, &pt_len), 0)
			<< criusec_last_error();
		EXPECT_EQ(pt_len, sizeof(msg));
		EXPECT_EQ(std::memcmp(pt, msg, sizeof(msg)), 0);
		free(st);
		free(pt);
	}

	static std::string import_error(const criusec_header &h, const KeyFiles &k)
	{
		auto c = own(criusec_ctx_import(&h, k.key.c_str()));
		EXPECT_FALSE(c) << "tampered header accepted";
		return criusec_last_error();
	}

	static const KeyFiles *k1_, *k2_, *k3_, *outsider_;
};

const KeyFiles *Header::k1_, *Header::k2_, *Header::k3_, *Header::outsider_;

TEST_F(Header, ExportNeedsARecipient)
{
	auto c = make({});
	criusec_header h;
	EXPECT_EQ(criusec_ctx_export(c.get(), &h), -EINVAL);
	EXPECT_NE(std::string(criusec_last_error()).find("no recipient"), std::string::npos);
}

TEST_F(Header, OneRecipientRoundTrip)
{
	auto c = make({k1_});
	auto h = exported(c.get());
	EXPECT_EQ(h.version, 1u);
	EXPECT_EQ(h.has_parent, 0);
	EXPECT_EQ(h.aead, static_cast<uint32_t>(CRIUSEC_AEAD_AES_256_GCM));
	EXPECT_EQ(h.chunk_size, 65536u);
	ASSERT_EQ(h.n_recipients, 1u);
	EXPECT_EQ(h.recipients[0].wrap_alg, static_cast<uint32_t>(CRIUSEC_WRAP_RSA_PKCS1V15));
	EXPECT_EQ(h.recipients[0].wrapped_len, 256u); /* RSA-2048 */
	EXPECT_EQ(std::memcmp(h.ckpt_id, criusec_ctx_id(c.get()), CRIUSEC_ID_LEN), 0);
	expect_imports(c.get(), h, *k1_);
}

TEST_F(Header, ThreeRecipientsEachCanImport)
{
	for (auto aead : {CRIUSEC_AEAD_AES_256_GCM, CRIUSEC_AEAD_CHACHA20_POLY1305}) {
		auto c = make({k1_, k2_, k3_}, aead);
		auto h = exported(c.get());
		ASSERT_EQ(h.n_recipients, 3u);
		EXPECT_EQ(h.recipients[1].wrapped_len, 384u); /* RSA-3072 */
		EXPECT_NE(std::memcmp(h.recipients[0].fingerprint, h.recipients[1].fingerprint, 32), 0);
		EXPECT_NE(std::memcmp(h.recipients[0].fingerprint, h.recipients[2].fingerprint, 32), 0);
		for (auto *k : {k1_, k2_, k3_})
			expect_imports(c.get(), h, *k);
	}
}

TEST_F(Header, KeyNotAmongRecipientsIsRefused)
{
	auto c = make({k1_, k2_, k3_});
	auto h = exported(c.get());
	EXPECT_EQ(import_error(h, *outsider_), "no recipient stanza matches the private key");
	auto c1 = make({k1_});
	EXPECT_EQ(import_error(exported(c1.get()), *k2_), "no recipient stanza matches the private key");
}

TEST_F(Header, FingerprintIsSha256OfSubjectPublicKeyInfo)
{
	/* Cross-check with OpenSSL's view of the certificate. */
	auto c = make({k2_});
	auto h = exported(c.get());
	std::string cmd = "openssl x509 -in '" + k2_->cert +
			  "' -noout -pubkey 2>/dev/null | openssl pkey -pubin -outform DER 2>/dev/null | "
			  "openssl dgst -sha256 -r 2>/dev/null";
	FILE *p = popen(cmd.c_str(), "r");
	ASSERT_TRUE(p);
	char buf[128] = {};
	size_t n = fread(buf, 1, sizeof(buf) - 1, p);
	int st = pclose(p);
	if (st != 0 || n < 64)
		GTEST_SKIP() << "openssl CLI not available";
	EXPECT_EQ(std::string(buf, 64), to_hex(h.recipients[0].fingerprint, 32));
}

TEST_F(Header, ParentIdIsCarriedAndAuthenticated)
{
	uint8_t parent[16];
	for (int i = 0; i < 16; i++)
		parent[i] = static_cast<uint8_t>(0xa0 + i);
	auto c = make({k1_}, CRIUSEC_AEAD_CHACHA20_POLY1305, parent);
	auto h = exported(c.get());
	EXPECT_EQ(h.has_parent, 1);
	EXPECT_EQ(std::memcmp(h.parent_id, parent, 16), 0);
	expect_imports(c.get(), h, *k1_);

	OwnedHeader t(h);
	t.hdr.parent_id[15] ^= 1;
	EXPECT_NE(import_error(t.hdr, *k1_).find("authentication failed"), std::string::npos);
	OwnedHeader u(h);
	u.hdr.has_parent = 0;
	EXPECT_NE(import_error(u.hdr, *k1_).find("authentication failed"), std::string::npos);
}

TEST_F(Header, ReexportAfterImportIsIdentical)
{
	auto c = make({k1_, k3_});
	auto h = exported(c.get());
	auto i = own(criusec_ctx_import(&h, k3_->key.c_str()));
	ASSERT_TRUE(i) << criusec_last_error();
	auto h2 = exported(i.get());
	EXPECT_EQ(std::memcmp(h.mac, h2.mac, 32), 0);
	ASSERT_EQ(h2.n_recipients, 2u);
	for (size_t r = 0; r < 2; r++) {
		ASSERT_EQ(h.recipients[r].wrapped_len, h2.recipients[r].wrapped_len);
		EXPECT_EQ(std::memcmp(h.recipients[r].wrapped, h2.recipients[r].wrapped, h2.recipients[r].wrapped_len),
			  0);
	}
}

TEST_F(Header, EarlierExportStaysValidAfterAddingRecipients)
{
	auto c = make({k1_});
	auto h1 = exported(c.get());
	ASSERT_EQ(criusec_ctx_add_recipient(c.get(), k2_->cert.c_str()), 0);
	ASSERT_EQ(criusec_ctx_add_recipient(c.get(), k3_->cert.c_str()), 0);
	auto h3 = exported(c.get());
	EXPECT_EQ(h3.n_recipients, 3u);
	EXPECT_EQ(h1.n_recipients, 1u);
	expect_imports(c.get(), h1, *k1_); /* h1's pointers are still alive (ASan checks this) */
	expect_imports(c.get(), h3, *k3_);
	EXPECT_NE(std::memcmp(h1.mac, h3.mac, 32), 0);
}

TEST_F(Header, DuplicateRecipientIsRefused)
{
	auto c = make({k1_});
	EXPECT_EQ(criusec_ctx_add_recipient(c.get(), k1_->cert.c_str()), -EEXIST);
}

struct Tamper {
	const char *what;
	std::function<void(OwnedHeader &)> edit;
	const char *expect; /* substring of the error */
};

TEST_F(Header, EveryTamperedFieldIsRefused)
{
	auto c = make({k1_, k2_, k3_});
	auto h = exported(c.get());
	auto other = make({k1_, k2_, k3_});
	auto ho = exported(other.get());
	const char *auth = "header authentication failed";
	/* The importing key is k2, the middle stanza (index 1). */
	std::vector<Tamper> cases = {
		{"version 2", [](auto &t) { t.hdr.version = 2; }, "unsupported cipher.img header version 2"},
		{"version 0", [](auto &t) { t.hdr.version = 0; }, "unsupported cipher.img header version 0"},
		{"ckpt id", [](auto &t) { t.hdr.ckpt_id[0] ^= 1; }, auth},
		{"ckpt id last", [](auto &t) { t.hdr.ckpt_id[15] ^= 0x80; }, auth},
		{"parent added", [](auto &t) { t.hdr.has_parent = 1; }, auth},
		{"has_parent 2", [](auto &t) { t.hdr.has_parent = 2; }, "has_parent must be 0 or 1"},
		{"aead swapped", [](auto &t) { t.hdr.aead = CRIUSEC_AEAD_CHACHA20_POLY1305; }, auth},
		{"aead 0", [](auto &t) { t.hdr.aead = 0; }, "unknown AEAD 0"},
		{"aead 3", [](auto &t) { t.hdr.aead = 3; }, "unknown AEAD 3"},
		{"chunk 128k", [](auto &t) { t.hdr.chunk_size = 131072; }, auth},
		{"chunk 4k", [](auto &t) { t.hdr.chunk_size = 4096; }, auth},
		{"chunk not pow2", [](auto &t) { t.hdr.chunk_size = 65535; }, "invalid chunk size 65535"},
		{"chunk small", [](auto &t) { t.hdr.chunk_size = 2048; }, "invalid chunk size 2048"},
		{"chunk big", [](auto &t) { t.hdr.chunk_size = 2u << 20; }, "invalid chunk size"},
		{"chunk 0", [](auto &t) { t.hdr.chunk_size = 0; }, "invalid chunk size 0"},
		{"own fingerprint", [](auto &t) { t.recipients[1].fingerprint[7] ^= 1; },
		 "no recipient stanza matches the private key"},
		{"other fingerprint", [](auto &t) { t.recipients[0].fingerprint[7] ^= 1; }, auth},
		{"own wrap alg", [](auto &t) { t.recipients[1].wrap_alg = 2; }, "unknown key wrap algorithm 2"},
		{"other wrap alg", [](auto &t) { t.recipients[2].wrap_alg = 7; }, auth},
		{"own wrapped key", [](auto &t) { t.wrapped[1][100] ^= 1; }, auth},
		{"own wrapped key first byte", [](auto &t) { t.wrapped[1][0] ^= 1; }, auth},
		{"own wrapped key last byte", [](auto &t) { t.wrapped[1].back() ^= 1; }, auth},
		{"own wrapped key short", [](auto &t) { t.wrapped[1].pop_back(); t.fixup(); }, auth},
		{"own wrapped key long", [](auto &t) { t.wrapped[1].push_back(0); t.fixup(); }, auth},
		{"own wrapped key empty", [](auto &t) { t.wrapped[1].clear(); t.fixup(); }, "invalid wrapped key length 0"},
		{"other wrapped key", [](auto &t) { t.wrapped[2][5] ^= 1; }, auth},
		{"stanza dropped",
		 [](auto &t) {
			 t.recipients.erase(t.recipients.begin());
			 t.wrapped.erase(t.wrapped.begin());
			 t.fixup();
		 },
		 auth},
		{"stanzas reordered",
		 [](auto &t) {
			 std::swap(t.recipients[0], t.recipients[2]);
			 std::swap(t.wrapped[0], t.wrapped[2]);
			 t.fixup();
		 },
		 auth},
		{"stanza duplicated",
		 [](auto &t) {
			 t.recipients.push_back(t.recipients[1]);
			 t.wrapped.push_back(t.wrapped[1]);
			 t.fixup();
		 },
		 "duplicate recipient stanza"},
		{"no stanzas",
		 [](auto &t) {
			 t.recipients.clear();
			 t.wrapped.clear();
			 t.fixup();
		 },
		 "has no recipient"},
		{"stanza from another checkpoint",
		 [&](auto &t) {
			 const auto &r = ho.recipients[1];
			 t.wrapped[1].assign(r.wrapped, r.wrapped + r.wrapped_len);
		 },
		 auth},
		{"id of another checkpoint", [&](auto &t) { std::memcpy(t.hdr.ckpt_id, ho.ckpt_id, 16); }, auth},
		{"mac of another checkpoint", [&](auto &t) { std::memcpy(t.hdr.mac, ho.mac, 32); }, auth},
	};
	for (int i = 0; i < 32; i++)
		cases.push_back({"mac byte", [i](auto &t) { t.hdr.mac[i] ^= static_cast<uint8_t>(1u << (i % 8)); }, auth});

	for (const auto &tc : cases) {
		OwnedHeader t(h);
		tc.edit(t);
		std::string err = import_error(t.hdr, *k2_);
		EXPECT_NE(err.find(tc.expect), std::string::npos) << tc.what << ": \"" << err << "\"";
	}
	/* and the untouched copy still imports */
	OwnedHeader t(h);
	expect_imports(c.get(), t.hdr, *k2_);
}

TEST_F(Header, RecipientCertificateErrors)
{
	auto c = make({});
	EXPECT_EQ(criusec_ctx_add_recipient(c.get(), "/nonexistent/cert.pem"), -ENOENT);
	EXPECT_NE(std::string(criusec_last_error()).find("/nonexistent/cert.pem"), std::string::npos);
	EXPECT_EQ(criusec_ctx_add_recipient(c.get(), k1_->key.c_str()), -EINVAL); /* a key, not a cert */
	EXPECT_NE(std::string(criusec_last_error()).find("not a PEM X.509 certificate"), std::string::npos);
	auto &ec = test_key("ecdsa", 256, KeyType::Ecdsa);
	EXPECT_EQ(criusec_ctx_add_recipient(c.get(), ec.cert.c_str()), -EOPNOTSUPP);
	EXPECT_NE(std::string(criusec_last_error()).find("not RSA"), std::string::npos);
	auto &weak = test_key("weak", 1024);
	EXPECT_EQ(criusec_ctx_add_recipient(c.get(), weak.cert.c_str()), -EINVAL);
	EXPECT_NE(std::string(criusec_last_error()).find("at least 2048"), std::string::npos);
	EXPECT_EQ(criusec_ctx_add_recipient(nullptr, k1_->cert.c_str()), -EINVAL);
	EXPECT_EQ(criusec_ctx_add_recipient(c.get(), nullptr), -EINVAL);
}

TEST_F(Header, PrivateKeyErrors)
{
	auto c = make({k1_});
	auto h = exported(c.get());
	EXPECT_FALSE(criusec_ctx_import(&h, "/nonexistent/key.pem"));
	EXPECT_NE(std::string(criusec_last_error()).find("No such file"), std::string::npos);
	EXPECT_FALSE(criusec_ctx_import(&h, k1_->cert.c_str())); /* a cert, not a key */
	EXPECT_NE(std::string(criusec_last_error()).find("cannot load PEM private key"), std::string::npos);
	EXPECT_FALSE(criusec_ctx_import(&h, test_key("ecdsa", 256, KeyType::Ecdsa).key.c_str()));
	EXPECT_NE(std::string(criusec_last_error()).find("private key is not RSA"), std::string::npos);
	EXPECT_FALSE(criusec_ctx_import(nullptr, k1_->key.c_str()));
	EXPECT_FALSE(criusec_ctx_import(&h, nullptr));
	OwnedHeader t(h);
	t.hdr.recipients = nullptr;
	EXPECT_FALSE(criusec_ctx_import(&t.hdr, k1_->key.c_str()));
	t.hdr.n_recipients = SIZE_MAX;
	EXPECT_FALSE(criusec_ctx_import(&t.hdr, k1_->key.c_str()));
	EXPECT_NE(std::string(criusec_last_error()).find("too many recipients"), std::string::npos);
}

} /* namespace */
