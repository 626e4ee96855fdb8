/* cipher.img header: recipients, key wrapping, the header MAC. */
#include <gtest/gtest.h>

#include <cstdio>
#include <cstring>
#include <ctime>
#include <functional>
#include <memory>
#include <string>

#include "capi_internal.h"
#include "capi_testing.h"
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

	CtxPtr make(std::initializer_list<const KeyFiles *> keys, criusec_aead aead = CRIUSEC_AEAD_AES_256_GCM)
	{
		auto c = own(criusec_ctx_new(aead));
		EXPECT_TRUE(c) << criusec_last_error();
		for (auto *k : keys)
			EXPECT_EQ(criusec_ctx_add_recipient(c.get(), k->cert.c_str(), 0), 0) << criusec_last_error();
		return c;
	}

	/* Sealed (unsigned, over a made-up manifest digest) and exported. */
	static criusec_header exported(criusec_ctx *c)
	{
		criusec_header h;
		const uint8_t digest[CRIUSEC_DIGEST_LEN] = {0xd1, 0x9e, 0x57};
		EXPECT_EQ(criusec_ctx_seal_header(c, nullptr, digest), 0) << criusec_last_error();
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
		ASSERT_EQ(criusec_stream_seal_buf(orig, "core", "core-1.img", msg, sizeof(msg), &st, &st_len, nullptr), 0);
		ASSERT_EQ(criusec_stream_open_buf(c.get(), "core", "core-1.img", st, st_len, &pt, &pt_len, nullptr), 0)
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

TEST_F(Header, SealNeedsARecipientAndExportASeal)
{
	auto c = make({});
	criusec_header h;
	const uint8_t digest[CRIUSEC_DIGEST_LEN] = {};
	EXPECT_EQ(criusec_ctx_seal_header(c.get(), nullptr, digest), -EINVAL);
	EXPECT_NE(std::string(criusec_last_error()).find("no recipient"), std::string::npos);
	ASSERT_EQ(criusec_ctx_add_recipient(c.get(), k1_->cert.c_str(), 0), 0);
	EXPECT_EQ(criusec_ctx_export(c.get(), &h), -EINVAL);
	EXPECT_NE(std::string(criusec_last_error()).find("not sealed"), std::string::npos);
}

TEST_F(Header, OneRecipientRoundTrip)
{
	auto c = make({k1_});
	auto before = static_cast<uint64_t>(time(nullptr));
	auto h = exported(c.get());
	EXPECT_EQ(h.version, 2u);
	EXPECT_GE(h.created, before);
	EXPECT_LE(h.created, static_cast<uint64_t>(time(nullptr)));
	EXPECT_EQ(h.manifest_digest[0], 0xd1);
	EXPECT_EQ(h.sig_alg, 0u);
	EXPECT_EQ(h.n_signer_certs, 0u);
	EXPECT_EQ(h.signature.len, 0u);
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

TEST_F(Header, ParentIsBoundByKey)
{
	auto p = make({k1_});
	auto hp = exported(p.get());
	auto c = make({k1_}, CRIUSEC_AEAD_CHACHA20_POLY1305);
	ASSERT_EQ(criusec_ctx_set_parent(c.get(), p.get()), 0) << criusec_last_error();
	auto hc = exported(c.get());
	EXPECT_EQ(hc.has_parent, 1);
	EXPECT_EQ(std::memcmp(hc.parent_id, hp.ckpt_id, 16), 0);
	expect_imports(c.get(), hc, *k1_);

	auto ci = own(criusec_ctx_import(&hc, k1_->key.c_str()));
	auto pi = own(criusec_ctx_import(&hp, k1_->key.c_str()));
	ASSERT_TRUE(ci && pi) << criusec_last_error();
	EXPECT_EQ(criusec_ctx_check_parent(ci.get(), pi.get()), 0) << criusec_last_error();

	/* Another checkpoint as the parent. */
	auto other = make({k1_});
	auto ho = exported(other.get());
	auto oi = own(criusec_ctx_import(&ho, k1_->key.c_str()));
	EXPECT_EQ(criusec_ctx_check_parent(ci.get(), oi.get()), -EBADMSG);
	EXPECT_NE(std::string(criusec_last_error()).find("another checkpoint id"), std::string::npos);
	/* A checkpoint with no parent has none to check. */
	EXPECT_EQ(criusec_ctx_check_parent(pi.get(), ci.get()), -EBADMSG);

	/* The binding and the parent id are covered by the MAC. */
	OwnedHeader t(hc);
	t.hdr.parent_binding[31] ^= 1;
	EXPECT_NE(import_error(t.hdr, *k1_).find("authentication failed"), std::string::npos);
	OwnedHeader u(hc);
	u.hdr.parent_id[0] ^= 1;
	EXPECT_NE(import_error(u.hdr, *k1_).find("authentication failed"), std::string::npos);
	OwnedHeader w(hc);
	w.hdr.has_parent = 0;
	EXPECT_NE(import_error(w.hdr, *k1_).find("authentication failed"), std::string::npos);
}

TEST_F(Header, ParentForgedWithTheSameIdIsRefused)
{
	using namespace criusec;
	/* The genuine parent, and a forgery with its (public) id but another master key. */
	auto p = make({k1_});
	auto hp = exported(p.get());
	Id pid;
	std::memcpy(pid.data(), hp.ckpt_id, kIdLen);
	std::vector<uint8_t> mk(32, 0x77);
	auto forged = Ctx::from_master_key(mk, pid, AeadAlg::Aes256Gcm, kDefaultChunkSize);
	ASSERT_TRUE(forged.ok());
	criusec_ctx forged_c(std::move(forged).value());

	/* A child bound to the forgery does not check under the genuine parent... */
	auto c = make({k1_});
	ASSERT_EQ(criusec_ctx_set_parent(c.get(), &forged_c), 0);
	auto hc = exported(c.get());
	auto ci = own(criusec_ctx_import(&hc, k1_->key.c_str()));
	auto pi = own(criusec_ctx_import(&hp, k1_->key.c_str()));
	ASSERT_TRUE(ci && pi);
	EXPECT_EQ(criusec_ctx_check_parent(ci.get(), pi.get()), -EBADMSG);
	EXPECT_NE(std::string(criusec_last_error()).find("binding does not verify"), std::string::npos);
	/* ... and a genuine child does not check under the forgery. */
	auto g = make({k1_});
	ASSERT_EQ(criusec_ctx_set_parent(g.get(), p.get()), 0);
	auto hg = exported(g.get());
	auto gi = own(criusec_ctx_import(&hg, k1_->key.c_str()));
	EXPECT_EQ(criusec_ctx_check_parent(gi.get(), &forged_c), -EBADMSG);
	EXPECT_EQ(criusec_ctx_check_parent(gi.get(), pi.get()), 0);
}

TEST_F(Header, VersionOneStaysReadable)
{
	using namespace criusec;
	auto c = make({k1_});
	auto h2 = exported(c.get());
	auto ci = own(criusec_ctx_import(&h2, k1_->key.c_str()));
	ASSERT_TRUE(ci);
	/* The same stanzas as a version-1 header, with its MAC (format section 3). */
	HeaderView v = ci->ctx.header();
	v.version = 1;
	v.created = 0;
	v.manifest_digest = {};
	auto mac = ci->ctx.mac_over(v);
	ASSERT_TRUE(mac.ok());
	v.mac = mac.value();
	OwnedHeader t(h2);
	t.hdr.version = 1;
	t.hdr.created = 0;
	std::memset(t.hdr.manifest_digest, 0, sizeof(t.hdr.manifest_digest));
	std::memcpy(t.hdr.mac, v.mac.data(), 32);
	auto i1 = own(criusec_ctx_import(&t.hdr, k1_->key.c_str()));
	ASSERT_TRUE(i1) << criusec_last_error();
	EXPECT_EQ(criusec_ctx_manifest_digest(i1.get()), nullptr); /* format 1 has none */
	EXPECT_NE(criusec_ctx_manifest_digest(ci.get()), nullptr);

	/* Without a policy it is read; under any protection it is refused as unsigned. */
	criusec_policy none{};
	criusec_verdict vd;
	EXPECT_EQ(criusec_header_check(&t.hdr, &none, &vd), 0) << criusec_last_error();
	EXPECT_EQ(vd.is_signed, 0);
	criusec_policy required{};
	required.required = 1;
	EXPECT_EQ(criusec_header_check(&t.hdr, &required, &vd), -EKEYREJECTED);
	EXPECT_NE(std::string(criusec_last_error()).find("unsigned (format 1)"), std::string::npos);
	/* A version-1 header must not carry format-2 fields. */
	t.hdr.created = 5;
	EXPECT_EQ(criusec_header_check(&t.hdr, &none, &vd), -EBADMSG);
	EXPECT_NE(std::string(criusec_last_error()).find("version-1 header with format-2 fields"), std::string::npos);
}

TEST_F(Header, UnsignedHeaderUnderEachPolicy)
{
	auto c = make({k1_});
	auto h = exported(c.get());
	criusec_verdict v;
	criusec_policy none{};
	EXPECT_EQ(criusec_header_check(&h, &none, &v), 0) << criusec_last_error();
	EXPECT_EQ(v.is_signed, 0);
	EXPECT_EQ(v.created, h.created);

	criusec_policy required{};
	required.required = 1;
	EXPECT_EQ(criusec_header_check(&h, &required, &v), -EKEYREJECTED);
	EXPECT_NE(std::string(criusec_last_error()).find("unsigned"), std::string::npos);

	criusec_policy aged{};
	aged.max_age = 3600;
	EXPECT_EQ(criusec_header_check(&h, &aged, &v), -EKEYREJECTED);
	EXPECT_NE(std::string(criusec_last_error()).find("age cannot be trusted"), std::string::npos);
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

TEST_F(Header, SealedHeaderIsFinal)
{
	auto c = make({k1_});
	auto h1 = exported(c.get());
	/* Recipients and parent are signed with the header: no change after sealing. */
	EXPECT_EQ(criusec_ctx_add_recipient(c.get(), k2_->cert.c_str(), 0), -EINVAL);
	auto p = make({k1_});
	exported(p.get());
	EXPECT_EQ(criusec_ctx_set_parent(c.get(), p.get()), -EINVAL);
	/* Sealing again (a new manifest digest) gives a new MAC over the same stanzas. */
	OwnedHeader first(h1);
	const uint8_t other_digest[CRIUSEC_DIGEST_LEN] = {0x42};
	ASSERT_EQ(criusec_ctx_seal_header(c.get(), nullptr, other_digest), 0);
	criusec_header h2;
	ASSERT_EQ(criusec_ctx_export(c.get(), &h2), 0);
	EXPECT_NE(std::memcmp(first.hdr.mac, h2.mac, 32), 0);
	expect_imports(c.get(), h2, *k1_);
	expect_imports(c.get(), first.hdr, *k1_);
}

TEST_F(Header, DuplicateRecipientIsRefused)
{
	auto c = make({k1_});
	EXPECT_EQ(criusec_ctx_add_recipient(c.get(), k1_->cert.c_str(), 0), -EEXIST);
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
		{"version 3", [](auto &t) { t.hdr.version = 3; }, "unsupported cipher.img header version 3"},
		{"version 1", [](auto &t) { t.hdr.version = 1; }, "version-1 header with format-2 fields"},
		{"created", [](auto &t) { t.hdr.created += 1; }, auth},
		{"created earlier", [](auto &t) { t.hdr.created -= 86400; }, auth},
		{"manifest digest", [](auto &t) { t.hdr.manifest_digest[31] ^= 1; }, auth},
		{"signature on an unsigned header", [](auto &t) { t.signature.assign(64, 1); t.fixup(); },
		 "unsigned header with a signature"},
		{"sig_alg on an unsigned header", [](auto &t) { t.hdr.sig_alg = 5; },
		 "signed header needs 1..8 signer certificates"},
		{"unknown sig_alg", [](auto &t) { t.hdr.sig_alg = 99; }, "unknown signature algorithm 99"},
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
	EXPECT_EQ(criusec_ctx_add_recipient(c.get(), "/nonexistent/cert.pem", 0), -ENOENT);
	std::string err = criusec_last_error();
	auto at = err.find("/nonexistent/cert.pem");
	EXPECT_NE(at, std::string::npos);
	EXPECT_EQ(err.find("/nonexistent/cert.pem", at + 1), std::string::npos) << "path named twice: " << err;
	EXPECT_EQ(criusec_ctx_add_recipient(c.get(), k1_->key.c_str(), 0), -EINVAL); /* a key, not a cert */
	EXPECT_NE(std::string(criusec_last_error()).find("not a PEM X.509 certificate"), std::string::npos);
	auto &ec = test_key("ecdsa", 256, KeyType::Ecdsa);
	EXPECT_EQ(criusec_ctx_add_recipient(c.get(), ec.cert.c_str(), 0), -EOPNOTSUPP);
	EXPECT_NE(std::string(criusec_last_error()).find("not RSA"), std::string::npos);
	auto &weak = test_key("weak", 1024);
	EXPECT_EQ(criusec_ctx_add_recipient(c.get(), weak.cert.c_str(), 0), -EINVAL);
	EXPECT_NE(std::string(criusec_last_error()).find("at least 2048"), std::string::npos);
	EXPECT_EQ(criusec_ctx_add_recipient(nullptr, k1_->cert.c_str(), 0), -EINVAL);
	EXPECT_EQ(criusec_ctx_add_recipient(c.get(), nullptr, 0), -EINVAL);
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
