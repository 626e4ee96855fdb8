/*
 * Private keys in a token: a SoftHSM2 token made for this test suite (a
 * private SOFTHSM2_CONF in a temporary directory, an RSA key generated in
 * the token), reached through PKCS#11 URLs.  Skipped, saying why, where
 * softhsm2 or p11tool are missing.
 */
#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>

#include "criusec.h"
#include "pkcs11.h"
#include "pki.h"
#include "capi_testing.h"
#include "test_util.h"

using namespace criusec;
using namespace criusec::test;

namespace {

constexpr const char *kPin = "31415926";
constexpr const char *kKey = "pkcs11:token=criusec-unit;object=unit-key;type=private";

bool have(const char *tool)
{
	std::string cmd = std::string("command -v ") + tool + " >/dev/null 2>&1";
	return std::system(cmd.c_str()) == 0;
}

void write_file(const std::string &path, const std::string &data)
{
	std::ofstream(path, std::ios::binary) << data;
}

class Pkcs11 : public ::testing::Test {
protected:
	static void SetUpTestSuite()
	{
		if (!have("softhsm2-util") || !have("p11tool")) {
			skip_ = "needs softhsm2-util and p11tool (apt-get install softhsm2 gnutls-bin)";
			return;
		}
		dir_ = new TempDir();
		write_file(dir_->file("softhsm2.conf"), "directories.tokendir = " + dir_->file("tokens") +
								 "\nobjectstore.backend = file\nlog.level = ERROR\n");
		/* Before GnuTLS loads the module (at its first PKCS#11 call, below). */
		setenv("SOFTHSM2_CONF", dir_->file("softhsm2.conf").c_str(), 1);
		std::string pins = std::string("GNUTLS_PIN=") + kPin + " GNUTLS_SO_PIN=27182818 ";
		std::string init = "mkdir " + dir_->file("tokens") +
				   " && softhsm2-util --init-token --free --label criusec-unit --pin " + kPin +
				   " --so-pin 27182818 >/dev/null && " + pins +
				   "p11tool --login --generate-privkey rsa --bits 2048 --label unit-key "
				   "'pkcs11:token=criusec-unit' >/dev/null 2>&1";
		if (std::system(init.c_str()) != 0) {
			skip_ = "could not make a SoftHSM2 token (" + init + ")";
			return;
		}
		write_file(dir_->file("pin"), std::string(kPin) + "\n");
		write_file(dir_->file("wrong-pin"), "00000000\n");
		ca_ = new TestCert(make_ca("pkcs11 test CA"));
	}

	static void TearDownTestSuite()
	{
		delete ca_;
		delete dir_;
		ca_ = nullptr;
		dir_ = nullptr;
	}

	void SetUp() override
	{
		if (!skip_.empty())
			GTEST_SKIP() << skip_;
	}

	static std::string url(const std::string &pin_attr) { return std::string(kKey) + "?" + pin_attr; }
	static std::string good() { return url("pin-source=" + dir_->file("pin")); }

	/* The token key's certificate, from the test CA (usages of a node), as a PEM file. */
	static std::string cert_file()
	{
		auto k = load_private_key(good());
		EXPECT_TRUE(k.ok()) << k.status().message();
		TestCert c = make_cert_for({.cn = "token node",
					    .key_usage = GNUTLS_KEY_DIGITAL_SIGNATURE | GNUTLS_KEY_KEY_ENCIPHERMENT,
					    .issuer = ca_},
					   k.value());
		write_file(dir_->file("node.pem"), c.pem);
		return dir_->file("node.pem");
	}

	static void expect_refused(const std::string &ref, int err, const std::string &what)
	{
		auto k = load_private_key(ref);
		ASSERT_FALSE(k.ok());
		EXPECT_EQ(k.status().err(), err) << k.status().message();
		EXPECT_NE(k.status().message().find(what), std::string::npos) << k.status().message();
		EXPECT_EQ(k.status().message().find(kPin), std::string::npos);
		EXPECT_EQ(k.status().message().find("00000000"), std::string::npos);
	}

	static inline std::string skip_;
	static inline TempDir *dir_ = nullptr;
	static inline TestCert *ca_ = nullptr;
};

TEST(Pkcs11Url, DisplayHidesThePinValue)
{
	EXPECT_TRUE(is_pkcs11_url("pkcs11:token=a"));
	EXPECT_FALSE(is_pkcs11_url("/etc/pki/criu/private/key.pem"));
	EXPECT_EQ(criusec_key_is_url("pkcs11:object=k"), 1);
	EXPECT_EQ(criusec_key_is_url("key.pem"), 0);
	EXPECT_EQ(key_ref_display("pkcs11:token=a;pin-value=1234;object=k"), "pkcs11:token=a;pin-value=(hidden);object=k");
	EXPECT_EQ(key_ref_display("pkcs11:token=a?pin-value=12%334&module-name=x"),
		  "pkcs11:token=a?pin-value=(hidden)&module-name=x");
	EXPECT_EQ(key_ref_display("pkcs11:token=a?pin-source=/run/pin"), "pkcs11:token=a?pin-source=/run/pin");
	EXPECT_EQ(key_ref_display("/a/pin-value=1/key.pem"), "/a/pin-value=1/key.pem"); /* a path is a path */
	EXPECT_STREQ(criusec_key_display("pkcs11:object=k;pin-value=secret"), "pkcs11:object=k;pin-value=(hidden)");
}

TEST(Pkcs11Url, MalformedPinAttributesAreRefused)
{
	for (const char *bad : {"pkcs11:object=k?pin-value=1&pin-source=/p", "pkcs11:object=k?pin-value=%zz",
				"pkcs11:object=k?pin-source="}) {
		auto k = load_private_key(bad);
		ASSERT_FALSE(k.ok()) << bad;
		EXPECT_EQ(k.status().err(), EINVAL) << k.status().message();
	}
}

TEST_F(Pkcs11, LoadsTheKeyWithEveryPinForm)
{
	for (const std::string &ref :
	     {good(), url("pin-source=file:" + dir_->file("pin")), url(std::string("pin-value=") + kPin),
	      std::string(kKey) + ";pin-value=" + kPin}) {
		auto k = load_private_key(ref);
		ASSERT_TRUE(k.ok()) << ref << ": " << k.status().message();
		EXPECT_EQ(gnutls_privkey_get_pk_algorithm(k.value().get(), nullptr), GNUTLS_PK_RSA);
		EXPECT_TRUE(require_rsa(k.value()).ok());
		/* Its public half comes out of the token, for the recipient fingerprint. */
		auto pub = pubkey_from_privkey(k.value());
		ASSERT_TRUE(pub.ok()) << pub.status().message();
		EXPECT_TRUE(fingerprint(pub.value()).ok());
	}
}

TEST_F(Pkcs11, EachFailureHasItsOwnError)
{
	expect_refused(url("pin-value=00000000"), EACCES, "the token refused the PIN (a wrong pin-value)");
	expect_refused(url("pin-source=" + dir_->file("wrong-pin")), EACCES, "wrong PIN in pin-source");
	expect_refused(kKey, EACCES, "the token needs a PIN: add pin-source=FILE");
	expect_refused(url("pin-source=" + dir_->file("absent")), EACCES, "absent");
	expect_refused("pkcs11:token=no-such-token;object=unit-key?pin-source=" + dir_->file("pin"), ENOENT,
		       "no such PKCS#11 token or private key");
	expect_refused("pkcs11:token=criusec-unit;object=no-such-key?pin-source=" + dir_->file("pin"), ENOENT,
		       "no such PKCS#11 token or private key");
	/* After all that, the right PIN still works: the token was never locked. */
	EXPECT_TRUE(load_private_key(good()).ok());
}

/* The whole C API path: a checkpoint for the token's key, signed by it, unwrapped by it. */
TEST_F(Pkcs11, SignsAndUnwrapsInTheToken)
{
	const std::string cert = cert_file();
	criusec_signer *s = criusec_signer_load(good().c_str(), cert.c_str());
	ASSERT_NE(s, nullptr) << criusec_last_error();
	EXPECT_STREQ(criusec_signer_subject(s), "CN=token node");

	criusec_ctx *c = criusec_ctx_new(CRIUSEC_AEAD_AES_256_GCM);
	ASSERT_NE(c, nullptr);
	ASSERT_EQ(criusec_ctx_add_recipient(c, cert.c_str(), 0), 0) << criusec_last_error();
	const uint8_t digest[CRIUSEC_DIGEST_LEN] = {0x15};
	ASSERT_EQ(criusec_ctx_seal_header(c, s, digest), 0) << criusec_last_error();
	criusec_header h;
	ASSERT_EQ(criusec_ctx_export(c, &h), 0);
	EXPECT_EQ(h.sig_alg, static_cast<uint32_t>(CRIUSEC_SIG_RSA_PSS_SHA256)); /* SoftHSM does PSS */

	criusec_trust *t = criusec_trust_new();
	write_file(dir_->file("ca.pem"), ca_->pem);
	ASSERT_EQ(criusec_trust_add_file(t, dir_->file("ca.pem").c_str()), 0);
	criusec_policy pol{t, 1, 0};
	criusec_verdict v;
	ASSERT_EQ(criusec_header_check(&h, &pol, &v), 0) << criusec_last_error();
	EXPECT_TRUE(v.is_signed && v.trusted);
	EXPECT_STREQ(v.how, "CA CN=pkcs11 test CA");

	criusec_ctx *r = criusec_ctx_import(&h, good().c_str());
	ASSERT_NE(r, nullptr) << criusec_last_error();
	EXPECT_EQ(criusec_last_errno(), 0);
	EXPECT_EQ(std::memcmp(criusec_ctx_id(r), criusec_ctx_id(c), CRIUSEC_ID_LEN), 0);
	/* Same master key: a stream sealed by one opens with the other. */
	uint8_t *sealed = nullptr, *opened = nullptr;
	size_t sealed_len = 0, opened_len = 0;
	ASSERT_EQ(criusec_stream_seal_buf(c, "core", "core-1.img", "state", 5, &sealed, &sealed_len, nullptr), 0);
	ASSERT_EQ(criusec_stream_open_buf(r, "core", "core-1.img", sealed, sealed_len, &opened, &opened_len, nullptr),
		  0)
		<< criusec_last_error();
	EXPECT_EQ(std::string(reinterpret_cast<char *>(opened), opened_len), "state");
	std::free(sealed);
	std::free(opened);

	/* Another key is not a recipient: ENOKEY, which a holder of several keys skips. */
	const KeyFiles &other = test_key("pkcs11-other", 2048);
	EXPECT_EQ(criusec_ctx_import(&h, other.key.c_str()), nullptr);
	EXPECT_EQ(criusec_last_errno(), -ENOKEY) << criusec_last_error();
	/* A damaged wrapped key unwraps in the token to garbage or to an error: either way only the MAC fails. */
	OwnedHeader bad(h);
	bad.wrapped[0][bad.wrapped[0].size() / 2] ^= 0x40;
	bad.fixup();
	EXPECT_EQ(criusec_ctx_import(&bad.hdr, good().c_str()), nullptr);
	EXPECT_EQ(criusec_last_errno(), -EBADMSG);
	EXPECT_NE(std::string(criusec_last_error()).find("header authentication failed"), std::string::npos)
		<< criusec_last_error();

	criusec_ctx_free(r);
	criusec_ctx_free(c);
	criusec_trust_free(t);
	criusec_signer_free(s);
}

/*
 * A wrong PIN is not ENOKEY: a restore stops there.  (Checked while no
 * other key of the token is open: PKCS#11 logs a whole token in, so a
 * second key of a token logged in already needs no PIN.)
 */
TEST_F(Pkcs11, ImportFailsOnAWrongPin)
{
	const std::string cert = cert_file();
	criusec_ctx *c = criusec_ctx_new(CRIUSEC_AEAD_AES_256_GCM);
	ASSERT_NE(c, nullptr);
	ASSERT_EQ(criusec_ctx_add_recipient(c, cert.c_str(), 0), 0) << criusec_last_error();
	const uint8_t digest[CRIUSEC_DIGEST_LEN] = {};
	ASSERT_EQ(criusec_ctx_seal_header(c, nullptr, digest), 0);
	criusec_header h;
	ASSERT_EQ(criusec_ctx_export(c, &h), 0);
	EXPECT_EQ(criusec_ctx_import(&h, url("pin-value=00000000").c_str()), nullptr);
	EXPECT_EQ(criusec_last_errno(), -EACCES) << criusec_last_error();
	EXPECT_EQ(criusec_ctx_import(&h, kKey), nullptr);
	EXPECT_EQ(criusec_last_errno(), -EACCES) << criusec_last_error();
	criusec_ctx *r = criusec_ctx_import(&h, good().c_str());
	EXPECT_NE(r, nullptr) << criusec_last_error();
	criusec_ctx_free(r);
	criusec_ctx_free(c);
}

TEST_F(Pkcs11, SignerLoadFailsOnAWrongPin)
{
	const std::string cert = cert_file();
	const std::string bad = url(std::string("pin-value=") + "00000000");
	EXPECT_EQ(criusec_signer_load(bad.c_str(), cert.c_str()), nullptr);
	EXPECT_EQ(criusec_last_errno(), -EACCES);
	std::string err = criusec_last_error();
	EXPECT_NE(err.find("refused the PIN"), std::string::npos) << err;
	EXPECT_EQ(err.find("00000000"), std::string::npos) << err;
	EXPECT_NE(err.find("pin-value=(hidden)"), std::string::npos) << err;
}

} /* namespace */
