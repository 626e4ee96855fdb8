/* Which signers a reader trusts: pinned certificates and CA chains (format 2, section 10.4). */
#include <gtest/gtest.h>

#include <ctime>
#include <string>
#include <vector>

#include "sign.h"
#include "test_util.h"
#include "trust.h"

using namespace criusec;
using namespace criusec::test;

namespace {

constexpr int64_t kDay = 86400;

uint64_t now_s()
{
	return static_cast<uint64_t>(time(nullptr));
}

class Trust : public ::testing::Test {
protected:
	struct Pki {
		TestCert root, inter, other_root, expired_root, expired_inter;
		TestCert direct, via_inter, from_other, from_expired_root, via_expired_inter;
		TestCert expired, future, enc_only, no_usage;
		TestCert pinned, pinned_expired, pinned_enc_only;
		TestCert not_ca, from_not_ca, no_bc, from_no_bc;
	};

	static void SetUpTestSuite()
	{
		auto *p = new Pki;
		p->root = make_ca("trust root", nullptr, PkType::EcP384);
		p->inter = make_ca("trust intermediate", &p->root);
		/* Same subject as the trusted root, another key: only the signature tells them apart. */
		p->other_root = make_ca("trust root", nullptr, PkType::EcP256);
		const int64_t year = 365 * kDay;
		p->expired_root = make_cert({.cn = "expired root",
					     .ca = true,
					     .not_before = -10 * year,
					     .not_after = -kDay,
					     .key_usage = kCaUsage});
		p->expired_inter = make_cert({.cn = "expired intermediate",
					      .ca = true,
					      .not_before = -10 * year,
					      .not_after = -kDay,
					      .key_usage = kCaUsage,
					      .issuer = &p->root});
		p->direct = make_cert({.cn = "direct leaf", .issuer = &p->root});
		p->via_inter = make_cert({.cn = "leaf via intermediate", .type = PkType::Ed25519, .issuer = &p->inter});
		p->from_other = make_cert({.cn = "leaf of the other root", .issuer = &p->other_root});
		p->from_expired_root = make_cert({.cn = "leaf of the expired root", .issuer = &p->expired_root});
		p->via_expired_inter = make_cert({.cn = "leaf via expired intermediate", .issuer = &p->expired_inter});
		p->expired =
			make_cert({.cn = "expired leaf", .not_before = -year, .not_after = -kDay, .issuer = &p->root});
		p->future = make_cert(
			{.cn = "future leaf", .not_before = kDay, .not_after = 30 * kDay, .issuer = &p->root});
		p->enc_only = make_cert(
			{.cn = "encipherment leaf", .key_usage = GNUTLS_KEY_KEY_ENCIPHERMENT, .issuer = &p->root});
		p->no_usage = make_cert({.cn = "leaf without keyUsage", .key_usage = 0, .issuer = &p->root});
		/* Self-signed, not CAs: only ever trusted as pins. */
		p->pinned = make_cert({.cn = "pinned host", .type = PkType::Rsa2048});
		p->pinned_expired = make_cert({.cn = "pinned expired", .not_before = -year, .not_after = -kDay});
		p->pinned_enc_only = make_cert({.cn = "pinned encipherment", .key_usage = GNUTLS_KEY_KEY_ENCIPHERMENT});
		/* Trusted, but no CA (CA:FALSE, or no basicConstraints), though their keys signed another. */
		const unsigned sign_both = GNUTLS_KEY_DIGITAL_SIGNATURE | GNUTLS_KEY_KEY_CERT_SIGN;
		p->not_ca = make_cert({.cn = "not a ca", .key_usage = sign_both});
		p->from_not_ca = make_cert({.cn = "leaf of a non-ca", .issuer = &p->not_ca});
		p->no_bc =
			make_cert({.cn = "no basic constraints", .basic_constraints = false, .key_usage = sign_both});
		p->from_no_bc = make_cert({.cn = "leaf of a v1-style issuer", .issuer = &p->no_bc});
		pki_ = p;
	}

	static void TearDownTestSuite()
	{
		delete pki_;
		pki_ = nullptr;
	}

	static TrustStore store(std::initializer_list<const TestCert *> certs)
	{
		TrustStore ts;
		for (const auto *c : certs) {
			Status st = ts.add_pem(bytes_of(c->pem), "test.pem");
			EXPECT_TRUE(st.ok()) << st.message();
		}
		return ts;
	}

	static std::vector<Der> chain(std::initializer_list<const TestCert *> certs)
	{
		std::vector<Der> v;
		for (const auto *c : certs)
			v.push_back(c->der);
		return v;
	}

	/* Refused with EKEYREJECTED and a message that contains what. */
	static void expect_refused(const TrustStore &ts, const std::vector<Der> &ch, const std::string &what,
				   uint64_t now = now_s())
	{
		auto r = ts.verify(ch, now);
		ASSERT_FALSE(r.ok()) << "accepted: " << r.value().signer << " (" << r.value().how << ")";
		EXPECT_EQ(r.status().err(), EKEYREJECTED);
		EXPECT_NE(r.status().message().find(what), std::string::npos) << r.status().message();
	}

	static void expect_trusted(const TrustStore &ts, const std::vector<Der> &ch, const std::string &signer,
				   const std::string &how, uint64_t now = now_s())
	{
		auto r = ts.verify(ch, now);
		ASSERT_TRUE(r.ok()) << r.status().message();
		EXPECT_EQ(r.value().signer, signer);
		EXPECT_EQ(r.value().how, how);
	}

	static Pki *pki_;
};

Trust::Pki *Trust::pki_ = nullptr;

} /* namespace */

TEST_F(Trust, EmptyStoreRefusesEverything)
{
	TrustStore ts;
	EXPECT_EQ(ts.size(), 0u);
	EXPECT_TRUE(ts.subjects().empty());
	const auto &p = *pki_;
	for (const auto &ch : {chain({&p.pinned}), chain({&p.direct}), chain({&p.via_inter, &p.inter}), chain({})})
		expect_refused(ts, ch, "the trust store is empty");
}

TEST_F(Trust, PinnedSigner)
{
	const auto &p = *pki_;
	TrustStore ts = store({&p.pinned});
	expect_trusted(ts, chain({&p.pinned}), "CN=pinned host", "pinned");
	/* Whatever follows the pinned certificate does not matter. */
	expect_trusted(ts, chain({&p.pinned, &p.root}), "CN=pinned host", "pinned");
	/* Another certificate, even with a chain to nowhere, is not. */
	expect_refused(ts, chain({&p.direct}), "signer CN=direct leaf is not trusted");
	expect_refused(ts, chain({&p.direct}), "none of them is a CA");
}

TEST_F(Trust, PinnedSignerStillChecked)
{
	const auto &p = *pki_;
	TrustStore ts = store({&p.pinned_expired, &p.pinned_enc_only});
	expect_refused(ts, chain({&p.pinned_expired}), "signer certificate CN=pinned expired expired on ");
	expect_refused(ts, chain({&p.pinned_enc_only}),
		       "CN=pinned encipherment is not allowed to sign (keyUsage lacks digitalSignature)");
}

TEST_F(Trust, LeafOfTrustedCa)
{
	const auto &p = *pki_;
	TrustStore ts = store({&p.root});
	expect_trusted(ts, chain({&p.direct}), "CN=direct leaf", "CA CN=trust root");
	expect_trusted(ts, chain({&p.no_usage}), "CN=leaf without keyUsage", "CA CN=trust root");
	/* A chain that carries the anchor too is fine. */
	expect_trusted(ts, chain({&p.direct, &p.root}), "CN=direct leaf", "CA CN=trust root");
}

TEST_F(Trust, LeafThroughIntermediate)
{
	const auto &p = *pki_;
	TrustStore ts = store({&p.root});
	expect_trusted(ts, chain({&p.via_inter, &p.inter}), "CN=leaf via intermediate", "CA CN=trust root");
	expect_trusted(ts, chain({&p.via_inter, &p.inter, &p.root}), "CN=leaf via intermediate", "CA CN=trust root");
	/* Without the intermediate, or out of order: refused. */
	expect_refused(ts, chain({&p.via_inter}), "its chain does not lead to a trusted CA (GnuTLS: ");
	expect_refused(ts, chain({&p.via_inter, &p.root, &p.inter}), "signer CN=leaf via intermediate is not trusted");
	/* GnuTLS stops at the first certificate a trusted CA signed; nothing unverified may follow it. */
	expect_refused(ts, chain({&p.inter, &p.via_inter}),
		       "signer CN=trust intermediate is not trusted: certificate 2 of its chain is not on its path");
	expect_refused(ts, chain({&p.direct, &p.inter}), "certificate 2 of its chain is not on its path");

	/* A trusted intermediate CA is an anchor by itself. */
	TrustStore only_inter = store({&p.inter});
	expect_trusted(only_inter, chain({&p.via_inter}), "CN=leaf via intermediate", "CA CN=trust intermediate");
	expect_trusted(only_inter, chain({&p.via_inter, &p.inter}), "CN=leaf via intermediate",
		       "CA CN=trust intermediate");
	/* Both trusted, the whole chain carried: the nearest anchor. */
	TrustStore both = store({&p.root, &p.inter});
	expect_trusted(both, chain({&p.via_inter, &p.inter, &p.root}), "CN=leaf via intermediate",
		       "CA CN=trust intermediate");
}

TEST_F(Trust, SignerCertificateChecksUnderCa)
{
	const auto &p = *pki_;
	TrustStore ts = store({&p.root});
	expect_refused(ts, chain({&p.expired}), "signer certificate CN=expired leaf expired on ");
	expect_refused(ts, chain({&p.future}), "signer certificate CN=future leaf is not yet valid");
	expect_refused(ts, chain({&p.enc_only}),
		       "CN=encipherment leaf is not allowed to sign (keyUsage lacks digitalSignature)");
}

TEST_F(Trust, TimeIsTheCallers)
{
	const auto &p = *pki_;
	TrustStore ts = store({&p.root});
	uint64_t now = now_s();
	expect_trusted(ts, chain({&p.future}), "CN=future leaf", "CA CN=trust root", now + 2 * kDay);
	expect_refused(ts, chain({&p.direct}), "CN=direct leaf expired on ", now + 400 * kDay);
	expect_refused(ts, chain({&p.direct}), "is not yet valid", now - 2 * 3600);
}

TEST_F(Trust, LeafOfAnotherCaRefused)
{
	const auto &p = *pki_;
	TrustStore ts = store({&p.root});
	expect_refused(ts, chain({&p.from_other}),
		       "signer CN=leaf of the other root is not trusted: its chain does "
		       "not lead to a trusted CA (GnuTLS: ");
	expect_refused(ts, chain({&p.from_other, &p.other_root}), "is not trusted");
	/* Its CA trusted as well: accepted, and the anchor is the one that signed. */
	TrustStore both = store({&p.root, &p.other_root});
	expect_trusted(both, chain({&p.from_other}), "CN=leaf of the other root", "CA CN=trust root");
	expect_trusted(both, chain({&p.direct}), "CN=direct leaf", "CA CN=trust root");
}

TEST_F(Trust, NonCaCertificateIsNoAnchor)
{
	const auto &p = *pki_;
	for (const TestCert *issuer : {&p.not_ca, &p.no_bc}) {
		TrustStore ts = store({issuer, &p.root});
		const TestCert &lf = issuer == &p.not_ca ? p.from_not_ca : p.from_no_bc;
		expect_refused(ts, chain({&lf}), "is not trusted");
		expect_refused(ts, chain({&lf, issuer}), "is not trusted");
		/* It is still a pinned signer itself. */
		auto r = ts.verify(chain({issuer}), now_s());
		ASSERT_TRUE(r.ok()) << r.status().message();
		EXPECT_EQ(r.value().how, "pinned");
	}
}

TEST_F(Trust, ExpiredIntermediateOrAnchorRefused)
{
	const auto &p = *pki_;
	TrustStore ts = store({&p.root});
	expect_refused(
		ts, chain({&p.via_expired_inter, &p.expired_inter}),
		"certificate CN=expired intermediate of signer CN=leaf via expired intermediate's chain expired on");
	TrustStore old = store({&p.expired_root});
	expect_refused(old, chain({&p.from_expired_root}), "trusted CA CN=expired root expired on ");
}

TEST_F(Trust, ChainLimitsAndGarbage)
{
	const auto &p = *pki_;
	TrustStore ts = store({&p.root, &p.pinned});
	std::vector<Der> nine(kMaxSignerCerts + 1, p.pinned.der);
	expect_refused(ts, nine, "signer chain of 9 certificates (at most 8)");
	std::vector<Der> eight(kMaxSignerCerts, p.pinned.der);
	EXPECT_TRUE(ts.verify(eight, now_s()).ok());

	Der junk = pattern(300, 9);
	Der cut = p.direct.der;
	cut.resize(cut.size() - 10);
	Der flipped = p.direct.der;
	flipped[flipped.size() - 20] ^= 0x01; /* in the signature: parses, does not verify */
	expect_refused(ts, {junk}, "certificate 1 of the signer chain: not a DER X.509 certificate");
	expect_refused(ts, {cut}, "certificate 1 of the signer chain");
	expect_refused(ts, {p.direct.der, junk}, "certificate 2 of the signer chain");
	expect_refused(ts, {Der{}}, "certificate 1 of the signer chain");
	expect_refused(ts, {flipped}, "is not trusted");
	expect_refused(ts, {}, "names no signer certificate");
}

/*
 * A fleet's trust file while it moves to a new CA holds both, maybe with
 * the same name (a CA re-keyed): each CA's nodes are trusted, by their own
 * CA, and nobody else's.
 */
TEST_F(Trust, SeveralCasInOneFile)
{
	const auto &p = *pki_;
	TrustStore ts;
	const TestCert third = make_ca("a third CA");
	const TestCert from_third = make_cert({.cn = "leaf of the third CA", .issuer = &third});
	ASSERT_TRUE(ts.add_pem(bytes_of(p.root.pem + p.other_root.pem), "/etc/criu/trusted-signers.pem").ok());
	EXPECT_EQ(ts.size(), 2u);
	expect_trusted(ts, chain({&p.direct}), "CN=direct leaf", "CA CN=trust root");
	expect_trusted(ts, chain({&p.from_other}), "CN=leaf of the other root", "CA CN=trust root");
	expect_trusted(ts, chain({&p.via_inter, &p.inter}), "CN=leaf via intermediate", "CA CN=trust root");
	expect_refused(ts, chain({&from_third}), "is not trusted");

	/* Three CAs, from one file and another, in either order. */
	ASSERT_TRUE(ts.add_pem(bytes_of(third.pem), "new-ca.pem").ok());
	EXPECT_EQ(ts.size(), 3u);
	expect_trusted(ts, chain({&from_third}), "CN=leaf of the third CA", "CA CN=a third CA");
	expect_trusted(ts, chain({&p.direct}), "CN=direct leaf", "CA CN=trust root");
}

TEST_F(Trust, AddPem)
{
	const auto &p = *pki_;
	TrustStore ts;
	ASSERT_TRUE(ts.add_pem(bytes_of(p.root.pem + p.pinned.pem), "/etc/criu/trusted-signers.pem").ok());
	EXPECT_EQ(ts.size(), 2u);
	/* The same certificate again is not counted twice. */
	ASSERT_TRUE(ts.add_pem(bytes_of(p.pinned.pem), "again.pem").ok());
	EXPECT_EQ(ts.size(), 2u);
	EXPECT_EQ(ts.subjects(), (std::vector<std::string>{"CN=trust root", "CN=pinned host"}));

	for (std::string bad :
	     {"", "no certificate here\n", "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"}) {
		Status st = ts.add_pem(bytes_of(bad), "bad.pem");
		EXPECT_FALSE(st.ok());
		EXPECT_EQ(st.message().rfind("bad.pem", 0), 0u) << st.message();
	}
	/* A file with one bad certificate adds nothing. */
	Status st = ts.add_pem(bytes_of(p.inter.pem + "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"),
			       "half.pem");
	EXPECT_FALSE(st.ok());
	EXPECT_EQ(ts.size(), 2u);
	expect_trusted(ts, chain({&p.direct}), "CN=direct leaf", "CA CN=trust root");

	/* Moving keeps the anchors. */
	TrustStore moved = std::move(ts);
	expect_trusted(moved, chain({&p.via_inter, &p.inter}), "CN=leaf via intermediate", "CA CN=trust root");
}
