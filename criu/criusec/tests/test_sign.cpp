/* Signing keys, signer certificates and signatures (format 2, sections 10.3 and 10.4). */
#include <gtest/gtest.h>

#include <ctime>
#include <string>
#include <vector>

#include "pki.h"
#include "sign.h"
#include "test_util.h"

using namespace criusec;
using namespace criusec::test;

namespace {

uint64_t now_s()
{
	return static_cast<uint64_t>(time(nullptr));
}

PrivKey load(const std::string &pem)
{
	auto k = privkey_load_pem(bytes_of(pem));
	EXPECT_TRUE(k.ok()) << k.status().message();
	return k.ok() ? std::move(k).value() : PrivKey();
}

TestCert leaf(const std::string &cn, PkType t, unsigned usage = GNUTLS_KEY_DIGITAL_SIGNATURE)
{
	return make_cert({.cn = cn, .type = t, .key_usage = usage});
}

Result<Signer> signer_for(const TestCert &c, uint64_t now = now_s())
{
	return Signer::create(load(c.key_pem), bytes_of(c.pem), now);
}

const std::vector<uint8_t> kData = pattern(1000, 7);

/* Re-export a PKCS#8 key in GnuTLS's legacy format: PKCS#1 for RSA, SEC1 for EC. */
std::string legacy_pem(const std::string &pkcs8)
{
	X509PrivKey k;
	EXPECT_EQ(gnutls_x509_privkey_init(k.out()), 0);
	gnutls_datum_t d = as_datum(pkcs8.data(), pkcs8.size());
	EXPECT_EQ(gnutls_x509_privkey_import(k.get(), &d, GNUTLS_X509_FMT_PEM), 0);
	SecretDatum out;
	EXPECT_EQ(gnutls_x509_privkey_export2(k.get(), GNUTLS_X509_FMT_PEM, out.out()), 0);
	return std::string(reinterpret_cast<const char *>(out.data()), out.size());
}

} /* namespace */

TEST(SigAlg, WireValuesAndNames)
{
	for (uint32_t v = 0; v <= 5; v++) {
		auto a = sig_alg_from_wire(v);
		ASSERT_TRUE(a) << v;
		EXPECT_EQ(static_cast<uint32_t>(*a), v);
		EXPECT_STRNE(sig_alg_name(*a), "unknown");
	}
	EXPECT_FALSE(sig_alg_from_wire(6));
	EXPECT_FALSE(sig_alg_from_wire(0xffffffffu));
	EXPECT_STREQ(sig_alg_name(SigAlg::RsaPssSha256), "RSA-PSS-SHA256");
	EXPECT_STREQ(sig_alg_name(SigAlg::Ed25519), "Ed25519");
	EXPECT_STREQ(sig_alg_name(static_cast<SigAlg>(9)), "unknown");
}

TEST(PrivKeyLoad, EveryTypeAndEncoding)
{
	struct Case {
		PkType t;
		gnutls_pk_algorithm_t pk;
		const char *legacy_marker; /* the PEM label of GnuTLS's legacy export */
	} cases[] = {
		{PkType::Rsa2048, GNUTLS_PK_RSA, "BEGIN RSA PRIVATE KEY"},
		{PkType::EcP256, GNUTLS_PK_ECDSA, "BEGIN EC PRIVATE KEY"},
		{PkType::EcP384, GNUTLS_PK_ECDSA, "BEGIN EC PRIVATE KEY"},
		{PkType::Ed25519, GNUTLS_PK_EDDSA_ED25519, nullptr},
	};
	for (const auto &c : cases) {
		const std::string &pkcs8 = test_privkey_pem("load", c.t);
		ASSERT_NE(pkcs8.find("BEGIN PRIVATE KEY"), std::string::npos);
		std::vector<std::string> pems = {pkcs8};
		if (c.legacy_marker) {
			pems.push_back(legacy_pem(pkcs8));
			ASSERT_NE(pems.back().find(c.legacy_marker), std::string::npos) << pems.back().substr(0, 40);
		}
		for (const auto &pem : pems) {
			auto k = privkey_load_pem(bytes_of(pem));
			ASSERT_TRUE(k.ok()) << k.status().message();
			EXPECT_EQ(gnutls_privkey_get_pk_algorithm(k.value().get(), nullptr), c.pk);
			/* Recipients stay RSA only, through the same loader. */
			auto rsa = privkey_from_pem(bytes_of(pem));
			if (c.pk == GNUTLS_PK_RSA) {
				EXPECT_TRUE(rsa.ok()) << rsa.status().message();
			} else {
				ASSERT_FALSE(rsa.ok());
				EXPECT_EQ(rsa.status().err(), EOPNOTSUPP);
			}
		}
	}
}

TEST(PrivKeyLoad, GarbageRefused)
{
	for (std::string bad : {"", "not a key", "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"}) {
		auto k = privkey_load_pem(bytes_of(bad));
		ASSERT_FALSE(k.ok());
		EXPECT_EQ(k.status().err(), EINVAL);
	}
}

class SignRoundTrip : public ::testing::TestWithParam<std::tuple<PkType, SigAlg, size_t>> {};

TEST_P(SignRoundTrip, SignVerifyAndTamper)
{
	auto [type, alg, sig_len] = GetParam();
	TestCert c = leaf(std::string("signer-") + sig_alg_name(alg), type);
	auto s = signer_for(c);
	ASSERT_TRUE(s.ok()) << s.status().message();
	EXPECT_EQ(s.value().alg(), alg);
	EXPECT_EQ(s.value().subject(), std::string("CN=signer-") + sig_alg_name(alg));
	ASSERT_EQ(s.value().chain().size(), 1u);
	EXPECT_EQ(s.value().chain()[0], c.der);

	auto sig = s.value().sign(kData);
	ASSERT_TRUE(sig.ok()) << sig.status().message();
	if (sig_len)
		EXPECT_EQ(sig.value().size(), sig_len);
	else /* DER ECDSA-Sig-Value: a SEQUENCE */
		EXPECT_EQ(sig.value()[0], 0x30);
	Status ok = verify_signature(alg, c.der, kData, sig.value());
	EXPECT_TRUE(ok.ok()) << ok.message();

	auto data = kData;
	data[500] ^= 0x01;
	Status st = verify_signature(alg, c.der, data, sig.value());
	EXPECT_EQ(st.err(), EBADMSG);
	EXPECT_NE(st.message().find("does not verify"), std::string::npos) << st.message();

	for (size_t pos : {size_t(0), sig.value().size() / 2, sig.value().size() - 1}) {
		auto bad = sig.value();
		bad[pos] ^= 0x80;
		EXPECT_EQ(verify_signature(alg, c.der, kData, bad).err(), EBADMSG) << pos;
	}
	auto cut = sig.value();
	cut.pop_back();
	EXPECT_EQ(verify_signature(alg, c.der, kData, cut).err(), EBADMSG);
	EXPECT_EQ(verify_signature(alg, c.der, {}, sig.value()).err(), EBADMSG);

	/* Another key's certificate does not verify it. */
	TestCert other = leaf("other", type);
	EXPECT_EQ(verify_signature(alg, other.der, kData, sig.value()).err(), EBADMSG);
}

INSTANTIATE_TEST_SUITE_P(KeyTypes, SignRoundTrip,
			 ::testing::Values(std::make_tuple(PkType::Rsa2048, SigAlg::RsaPssSha256, size_t(256)),
					   std::make_tuple(PkType::EcP256, SigAlg::EcdsaP256Sha256, size_t(0)),
					   std::make_tuple(PkType::EcP384, SigAlg::EcdsaP384Sha384, size_t(0)),
					   std::make_tuple(PkType::Ed25519, SigAlg::Ed25519, size_t(64))));

TEST(Sign, ChainIsKeptInOrder)
{
	TestCert ca = make_ca("chain root");
	TestCert inter = make_ca("chain intermediate", &ca);
	TestCert lf = make_cert({.cn = "chain leaf", .issuer = &inter});
	auto signer = Signer::create(load(lf.key_pem), bytes_of(lf.pem + inter.pem), now_s());
	ASSERT_TRUE(signer.ok()) << signer.status().message();
	ASSERT_EQ(signer.value().chain().size(), 2u);
	EXPECT_EQ(signer.value().chain()[0], lf.der);
	EXPECT_EQ(signer.value().chain()[1], inter.der);
}

TEST(Sign, AlgorithmMustMatchTheKey)
{
	TestCert p256 = leaf("mm-p256", PkType::EcP256);
	TestCert p384 = leaf("mm-p384", PkType::EcP384);
	TestCert ed = leaf("mm-ed", PkType::Ed25519);
	TestCert rsa = leaf("mm-rsa", PkType::Rsa2048);
	auto s384 = signer_for(p384);
	auto s256 = signer_for(p256);
	auto sed = signer_for(ed);
	auto srsa = signer_for(rsa);
	ASSERT_TRUE(s384.ok() && s256.ok() && sed.ok() && srsa.ok());
	auto sig384 = s384.value().sign(kData);
	auto sig256 = s256.value().sign(kData);
	auto siged = sed.value().sign(kData);
	auto sigrsa = srsa.value().sign(kData);
	ASSERT_TRUE(sig384.ok() && sig256.ok() && siged.ok() && sigrsa.ok());

	struct Case {
		SigAlg alg;
		const TestCert *cert;
		const std::vector<uint8_t> *sig;
	} cases[] = {
		{SigAlg::EcdsaP256Sha256, &p384, &sig384.value()}, /* P-256 alg, P-384 cert and its signature */
		{SigAlg::EcdsaP384Sha384, &p256, &sig256.value()},
		{SigAlg::RsaPssSha256, &p256, &sig256.value()}, /* PSS with an EC certificate */
		{SigAlg::RsaPkcs1Sha256, &p256, &sig256.value()},
		{SigAlg::Ed25519, &rsa, &sigrsa.value()},
		{SigAlg::EcdsaP256Sha256, &ed, &siged.value()},
		{SigAlg::RsaPssSha256, &ed, &siged.value()},
	};
	for (const auto &c : cases) {
		Status st = verify_signature(c.alg, c.cert->der, kData, *c.sig);
		EXPECT_EQ(st.err(), EBADMSG) << sig_alg_name(c.alg);
		EXPECT_NE(st.message().find("does not match"), std::string::npos) << st.message();
	}
	EXPECT_EQ(verify_signature(SigAlg::None, rsa.der, kData, sigrsa.value()).err(), EBADMSG);
	EXPECT_EQ(verify_signature(static_cast<SigAlg>(6), rsa.der, kData, sigrsa.value()).err(), EBADMSG);
	/* The PSS signature does not pass as PKCS#1 v1.5. */
	EXPECT_EQ(verify_signature(SigAlg::RsaPkcs1Sha256, rsa.der, kData, sigrsa.value()).err(), EBADMSG);
}

TEST(Sign, GarbageCertificateAndSignatureRefused)
{
	TestCert c = leaf("garbage-test", PkType::EcP256);
	auto s = signer_for(c);
	ASSERT_TRUE(s.ok());
	auto sig = s.value().sign(kData);
	ASSERT_TRUE(sig.ok());

	std::vector<uint8_t> junk = pattern(500, 3);
	auto cut = c.der;
	cut.resize(cut.size() / 2);
	for (const auto *der : {&junk, &cut}) {
		Status st = verify_signature(SigAlg::EcdsaP256Sha256, *der, kData, sig.value());
		EXPECT_EQ(st.err(), EBADMSG) << st.message();
	}
	EXPECT_EQ(verify_signature(SigAlg::EcdsaP256Sha256, {}, kData, sig.value()).err(), EBADMSG);
	EXPECT_EQ(verify_signature(SigAlg::EcdsaP256Sha256, c.der, kData, {}).err(), EBADMSG);
	std::vector<uint8_t> huge(kMaxSignatureLen + 1, 1);
	EXPECT_EQ(verify_signature(SigAlg::EcdsaP256Sha256, c.der, kData, huge).err(), EBADMSG);
	std::vector<uint8_t> huge_der(kMaxCertLen + 1, 0x30);
	EXPECT_EQ(verify_signature(SigAlg::EcdsaP256Sha256, huge_der, kData, sig.value()).err(), EBADMSG);

	EXPECT_FALSE(cert_subject(junk).ok());
	EXPECT_EQ(check_signing_cert(junk, now_s()).err(), EKEYREJECTED);
	auto subj = cert_subject(c.der);
	ASSERT_TRUE(subj.ok());
	EXPECT_EQ(subj.value(), "CN=garbage-test");
}

TEST(Sign, SignerCertificateChecks)
{
	uint64_t now = now_s();
	TestCert expired = make_cert({.cn = "expired signer", .not_before = -2 * 365 * 86400, .not_after = -86400});
	TestCert future = make_cert({.cn = "future signer", .not_before = 86400, .not_after = 2 * 86400});
	TestCert enc_only = leaf("encipherment signer", PkType::EcP256, GNUTLS_KEY_KEY_ENCIPHERMENT);
	TestCert no_usage = leaf("no usage signer", PkType::EcP256, 0);

	struct Case {
		const TestCert *c;
		const char *expect;
	} refused[] = {
		{&expired, "signer certificate CN=expired signer expired on "},
		{&future, "signer certificate CN=future signer is not yet valid"},
		{&enc_only, "CN=encipherment signer is not allowed to sign (keyUsage lacks digitalSignature)"},
	};
	for (const auto &r : refused) {
		Status st = check_signing_cert(r.c->der, now);
		EXPECT_EQ(st.err(), EKEYREJECTED);
		EXPECT_NE(st.message().find(r.expect), std::string::npos) << st.message();
		auto sg = signer_for(*r.c, now);
		ASSERT_FALSE(sg.ok());
		EXPECT_EQ(sg.status().err(), EKEYREJECTED);
		EXPECT_NE(sg.status().message().find(r.expect), std::string::npos) << sg.status().message();
	}
	/* The date is the certificate's notAfter, in UTC. */
	EXPECT_NE(check_signing_cert(expired.der, now).message().find(" UTC (notAfter)"), std::string::npos);

	/* No keyUsage extension: any use, signing included. */
	EXPECT_TRUE(check_signing_cert(no_usage.der, now).ok());
	EXPECT_TRUE(signer_for(no_usage, now).ok());

	/* The time is the caller's: a valid certificate, two years later. */
	TestCert current = leaf("current signer", PkType::EcP256);
	EXPECT_TRUE(check_signing_cert(current.der, now).ok());
	EXPECT_EQ(check_signing_cert(current.der, now + 2 * 365 * 86400).err(), EKEYREJECTED);
	EXPECT_TRUE(check_signing_cert(future.der, now + 86400 + 60).ok());
	EXPECT_FALSE(signer_for(current, now + 2 * 365 * 86400).ok());
}

TEST(Sign, KeyMustBeTheCertificatesKey)
{
	TestCert a = leaf("key owner", PkType::EcP256);
	TestCert b = leaf("someone else", PkType::EcP256);
	TestCert r = leaf("rsa someone", PkType::Rsa2048);
	for (const TestCert *other : {&b, &r}) {
		auto s = Signer::create(load(other->key_pem), bytes_of(a.pem), now_s());
		ASSERT_FALSE(s.ok());
		EXPECT_EQ(s.status().err(), EINVAL);
		EXPECT_NE(s.status().message().find("not the key of its certificate CN=key owner"), std::string::npos)
			<< s.status().message();
	}
	EXPECT_EQ(Signer::create(PrivKey(), bytes_of(a.pem), now_s()).status().err(), EINVAL);
}

TEST(Sign, UnsupportedKeysRefused)
{
	for (PkType t : {PkType::Rsa1024, PkType::EcP521}) {
		TestCert c = leaf("weak or odd", t);
		auto s = signer_for(c);
		ASSERT_FALSE(s.ok());
		EXPECT_EQ(s.status().err(), EOPNOTSUPP) << s.status().message();
	}
	/* A 1024-bit RSA signer's signature is refused too. */
	TestCert weak = leaf("weak rsa", PkType::Rsa1024);
	PrivKey k = load(weak.key_pem);
	gnutls_datum_t d = as_datum(kData.data(), kData.size());
	Datum sig;
	ASSERT_EQ(gnutls_privkey_sign_data2(k.get(), GNUTLS_SIGN_RSA_PSS_RSAE_SHA256, 0, &d, sig.out()), 0);
	EXPECT_EQ(verify_signature(SigAlg::RsaPssSha256, weak.der, kData, {sig.data(), sig.size()}).err(), EBADMSG);
}

TEST(Sign, CertificateChainLimits)
{
	TestCert c = leaf("limits", PkType::EcP256);
	std::string pem;
	for (size_t i = 0; i < kMaxSignerCerts; i++)
		pem += c.pem;
	auto eight = certs_from_pem(bytes_of(pem));
	ASSERT_TRUE(eight.ok()) << eight.status().message();
	EXPECT_EQ(eight.value().size(), kMaxSignerCerts);
	pem += c.pem;
	auto nine = certs_from_pem(bytes_of(pem));
	ASSERT_FALSE(nine.ok());
	EXPECT_EQ(nine.status().err(), EINVAL);
	EXPECT_FALSE(Signer::create(load(c.key_pem), bytes_of(pem), now_s()).ok());

	for (std::string bad : {"", "junk", "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"})
		EXPECT_FALSE(certs_from_pem(bytes_of(bad)).ok()) << bad;

	/* One certificate over 16384 bytes of DER. */
	TestCert big = make_cert({.cn = "big", .padding = kMaxCertLen});
	ASSERT_GT(big.der.size(), kMaxCertLen);
	auto r = certs_from_pem(bytes_of(big.pem));
	ASSERT_FALSE(r.ok());
	EXPECT_NE(r.status().message().find("16384"), std::string::npos) << r.status().message();
	TestCert fine = make_cert({.cn = "big but fine", .padding = kMaxCertLen - 1000});
	ASSERT_LE(fine.der.size(), kMaxCertLen);
	EXPECT_TRUE(certs_from_pem(bytes_of(fine.pem)).ok());
}

namespace {

/*
 * An external key that, like a PKCS#11 token without RSA-PSS, refuses PSS
 * and makes PKCS#1 v1.5 signatures with the real key behind it.  GnuTLS
 * hands such a key the digest: a DigestInfo to pad (RSA_RAW), or the bare
 * hash for PSS.
 */
struct NoPssKey {
	PrivKey real;
	int pss_attempts = 0;
};

int no_pss_sign_hash(gnutls_privkey_t, gnutls_sign_algorithm_t algo, void *userdata, unsigned,
		     const gnutls_datum_t *hash, gnutls_datum_t *sig)
{
	auto *k = static_cast<NoPssKey *>(userdata);
	if (algo != GNUTLS_SIGN_RSA_RAW) {
		k->pss_attempts++;
		return GNUTLS_E_UNSUPPORTED_SIGNATURE_ALGORITHM;
	}
	return gnutls_privkey_sign_hash(k->real.get(), GNUTLS_DIG_UNKNOWN, GNUTLS_PRIVKEY_SIGN_FLAG_TLS1_RSA, hash,
					sig);
}

int no_pss_info(gnutls_privkey_t, unsigned flags, void *)
{
	if (flags & GNUTLS_PRIVKEY_INFO_PK_ALGO)
		return GNUTLS_PK_RSA;
	if (flags & GNUTLS_PRIVKEY_INFO_PK_ALGO_BITS)
		return 2048;
	if (flags & GNUTLS_PRIVKEY_INFO_HAVE_SIGN_ALGO)
		return GNUTLS_FLAGS_TO_SIGN_ALGO(flags) == GNUTLS_SIGN_RSA_SHA256;
	return -1;
}

/* An external key in front of backing (which must outlive it). */
PrivKey no_pss_key(NoPssKey &backing)
{
	PrivKey ext;
	EXPECT_EQ(gnutls_privkey_init(ext.out()), 0);
	EXPECT_EQ(gnutls_privkey_import_ext4(ext.get(), &backing, nullptr, no_pss_sign_hash, nullptr, nullptr,
					     no_pss_info, 0),
		  0);
	return ext;
}

} /* namespace */

TEST(Sign, RsaFallsBackToPkcs1WhenTheKeyCannotDoPss)
{
	TestCert c = leaf("token signer", PkType::Rsa2048);
	NoPssKey backing{load(c.key_pem)};
	auto s = Signer::create(no_pss_key(backing), bytes_of(c.pem), now_s());
	ASSERT_TRUE(s.ok()) << s.status().message();
	EXPECT_EQ(s.value().alg(), SigAlg::RsaPkcs1Sha256);
	EXPECT_EQ(backing.pss_attempts, 1); /* tried once, in create() */
	auto sig = s.value().sign(kData);
	ASSERT_TRUE(sig.ok()) << sig.status().message();
	EXPECT_TRUE(verify_signature(SigAlg::RsaPkcs1Sha256, c.der, kData, sig.value()).ok());
	EXPECT_EQ(verify_signature(SigAlg::RsaPssSha256, c.der, kData, sig.value()).err(), EBADMSG);

	/* Such a key that is not the certificate's is still refused (by the probe). */
	TestCert other = leaf("not the token's", PkType::Rsa2048);
	NoPssKey backing2{load(c.key_pem)};
	auto bad = Signer::create(no_pss_key(backing2), bytes_of(other.pem), now_s());
	ASSERT_FALSE(bad.ok());
	EXPECT_NE(bad.status().message().find("not the key of its certificate"), std::string::npos)
		<< bad.status().message();
}
