#include "test_util.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <mutex>
#include <stdexcept>

#include <gnutls/gnutls.h>
#include <gnutls/x509.h>

#include "capi_internal.h"
#include "gnutls_raii.h"
#include "ctx.h"

namespace fs = std::filesystem;

namespace criusec::test {

/* A pipe whose reader gave up must fail the writer with EPIPE, not kill the test. */
[[maybe_unused]] static const bool g_sigpipe_ignored = (signal(SIGPIPE, SIG_IGN), true);

std::vector<uint8_t> hex(std::string_view s)
{
	std::vector<uint8_t> v;
	for (size_t i = 0; i + 1 < s.size(); i += 2)
		v.push_back(static_cast<uint8_t>(std::stoi(std::string(s.substr(i, 2)), nullptr, 16)));
	return v;
}

std::string to_hex(const uint8_t *p, size_t n)
{
	static const char d[] = "0123456789abcdef";
	std::string s;
	for (size_t i = 0; i < n; i++) {
		s += d[p[i] >> 4];
		s += d[p[i] & 15];
	}
	return s;
}

std::vector<uint8_t> pattern(size_t n, uint32_t seed)
{
	std::vector<uint8_t> v(n);
	uint32_t x = seed * 2654435761u + 1;
	for (auto &b : v) {
		x ^= x << 13;
		x ^= x >> 17;
		x ^= x << 5;
		b = static_cast<uint8_t>(x);
	}
	return v;
}

TempDir::TempDir()
{
	std::string tmpl = (fs::temp_directory_path() / "criusec-test-XXXXXX").string();
	if (!mkdtemp(tmpl.data()))
		throw std::runtime_error("mkdtemp failed");
	path_ = tmpl;
}

TempDir::~TempDir()
{
	std::error_code ec;
	fs::remove_all(path_, ec);
}

namespace {

void check(int rc, const char *what)
{
	if (rc < 0)
		throw std::runtime_error(std::string(what) + ": " + gnutls_strerror(rc));
}

void write_datum(const std::string &path, const gnutls_datum_t &d)
{
	std::ofstream f(path, std::ios::binary);
	f.write(reinterpret_cast<const char *>(d.data), d.size);
	if (!f)
		throw std::runtime_error("cannot write " + path);
}

void generate(const std::string &dir, unsigned bits, KeyType type, bool pkcs8)
{
	X509PrivKey key;
	check(gnutls_x509_privkey_init(key.out()), "privkey_init");
	if (type == KeyType::Rsa)
		check(gnutls_x509_privkey_generate(key.get(), GNUTLS_PK_RSA, bits, 0), "generate RSA");
	else
		check(gnutls_x509_privkey_generate(key.get(), GNUTLS_PK_ECDSA,
						   GNUTLS_CURVE_TO_BITS(GNUTLS_ECC_CURVE_SECP256R1), 0),
		      "generate ECDSA");
	SecretDatum key_pem;
	if (pkcs8)
		check(gnutls_x509_privkey_export2_pkcs8(key.get(), GNUTLS_X509_FMT_PEM, nullptr, GNUTLS_PKCS_PLAIN,
							key_pem.out()),
		      "export pkcs8");
	else
		check(gnutls_x509_privkey_export2(key.get(), GNUTLS_X509_FMT_PEM, key_pem.out()), "export key");
	write_datum(dir + "/key.pem", key_pem.get());

	CertSpec spec;
	spec.cn = "criusec test";
	spec.basic_constraints = false;
	spec.not_after = 3650L * 86400;
	spec.key_usage = GNUTLS_KEY_KEY_ENCIPHERMENT | GNUTLS_KEY_DIGITAL_SIGNATURE;
	TestCert cert = make_cert_with_key(
		spec, std::string(reinterpret_cast<const char *>(key_pem.data()), key_pem.size()));
	write_datum(dir + "/cert.pem", as_datum(cert.pem.data(), cert.pem.size()));
}

/*
 * CRIUSEC_TEST_KEY_DIR/<id>, made by gen(dir) on first use: generated aside
 * and renamed into place, so concurrent test processes never see half of it.
 */
fs::path cached_dir(const std::string &id, const std::function<void(const std::string &)> &gen)
{
	fs::path base = CRIUSEC_TEST_KEY_DIR;
	fs::create_directories(base);
	fs::path final_dir = base / id;
	if (!fs::exists(final_dir / "key.pem")) {
		std::string tmpl = (base / ".tmp-XXXXXX").string();
		if (!mkdtemp(tmpl.data()))
			throw std::runtime_error("mkdtemp failed");
		gen(tmpl);
		if (rename(tmpl.c_str(), final_dir.c_str()) != 0)
			fs::remove_all(tmpl); /* someone else won the race */
	}
	return final_dir;
}

} /* namespace */

const KeyFiles &test_key(const std::string &name, unsigned bits, KeyType type, bool pkcs8)
{
	static std::mutex mu;
	static std::map<std::string, KeyFiles> cache;
	std::lock_guard<std::mutex> lock(mu);
	std::string id = name + "-" + std::to_string(bits) + (type == KeyType::Rsa ? "-rsa" : "-ecdsa") +
			 (pkcs8 ? "-pkcs8" : "");
	if (auto it = cache.find(id); it != cache.end())
		return it->second;
	fs::path dir = cached_dir(id, [&](const std::string &d) { generate(d, bits, type, pkcs8); });
	return cache[id] = KeyFiles{(dir / "cert.pem").string(), (dir / "key.pem").string()};
}

criusec_ctx *make_ctx(AeadAlg aead, uint32_t chunk_size)
{
	auto c = Ctx::create(aead, chunk_size);
	if (!c.ok())
		throw std::runtime_error(c.status().message());
	return new criusec_ctx(std::move(c).value());
}

OwnedHeader::OwnedHeader(const criusec_header &h) : hdr(h)
{
	for (size_t i = 0; i < h.n_recipients; i++) {
		recipients.push_back(h.recipients[i]);
		wrapped.emplace_back(h.recipients[i].wrapped, h.recipients[i].wrapped + h.recipients[i].wrapped_len);
	}
	for (size_t i = 0; i < h.n_signer_certs; i++)
		certs.emplace_back(h.signer_certs[i].data, h.signer_certs[i].data + h.signer_certs[i].len);
	signature.assign(h.signature.data, h.signature.data + h.signature.len);
	fixup();
}

void OwnedHeader::fixup()
{
	for (size_t i = 0; i < recipients.size() && i < wrapped.size(); i++) {
		recipients[i].wrapped = wrapped[i].data();
		recipients[i].wrapped_len = wrapped[i].size();
	}
	hdr.recipients = recipients.data();
	hdr.n_recipients = recipients.size();
	cert_blobs.clear();
	for (const auto &c : certs)
		cert_blobs.push_back({c.data(), c.size()});
	hdr.signer_certs = cert_blobs.data();
	hdr.n_signer_certs = cert_blobs.size();
	hdr.signature = {signature.data(), signature.size()};
}

std::vector<uint8_t> read_fd_all(int fd)
{
	std::vector<uint8_t> v;
	uint8_t buf[65536];
	for (;;) {
		ssize_t n = read(fd, buf, sizeof(buf));
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			throw std::runtime_error("read failed");
		if (n == 0)
			return v;
		v.insert(v.end(), buf, buf + n);
	}
}

void write_all(int fd, const std::vector<uint8_t> &data)
{
	size_t done = 0;
	while (done < data.size()) {
		ssize_t n = write(fd, data.data() + done, data.size() - done);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			throw std::runtime_error("write failed");
		done += static_cast<size_t>(n);
	}
}

namespace {

struct PkInfo {
	PkType type;
	const char *name;
	gnutls_pk_algorithm_t pk;
	unsigned bits;
};

constexpr PkInfo kPkInfo[] = {
	{PkType::Rsa2048, "rsa2048", GNUTLS_PK_RSA, 2048},
	{PkType::Rsa1024, "rsa1024", GNUTLS_PK_RSA, 1024},
	{PkType::EcP256, "p256", GNUTLS_PK_ECDSA, GNUTLS_CURVE_TO_BITS(GNUTLS_ECC_CURVE_SECP256R1)},
	{PkType::EcP384, "p384", GNUTLS_PK_ECDSA, GNUTLS_CURVE_TO_BITS(GNUTLS_ECC_CURVE_SECP384R1)},
	{PkType::EcP521, "p521", GNUTLS_PK_ECDSA, GNUTLS_CURVE_TO_BITS(GNUTLS_ECC_CURVE_SECP521R1)},
	{PkType::Ed25519, "ed25519", GNUTLS_PK_EDDSA_ED25519, GNUTLS_CURVE_TO_BITS(GNUTLS_ECC_CURVE_ED25519)},
};

const PkInfo &pk_info(PkType t)
{
	for (const auto &i : kPkInfo)
		if (i.type == t)
			return i;
	throw std::logic_error("unknown PkType");
}

void generate_privkey(const std::string &dir, PkType t)
{
	X509PrivKey key;
	check(gnutls_x509_privkey_init(key.out()), "privkey_init");
	check(gnutls_x509_privkey_generate(key.get(), pk_info(t).pk, pk_info(t).bits, 0), "generate key");
	SecretDatum pem;
	check(gnutls_x509_privkey_export2_pkcs8(key.get(), GNUTLS_X509_FMT_PEM, nullptr, GNUTLS_PKCS_PLAIN, pem.out()),
	      "export pkcs8");
	write_datum(dir + "/key.pem", pem.get());
}

std::string read_text(const fs::path &p)
{
	std::ifstream f(p, std::ios::binary);
	std::string s((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
	if (!f && !f.eof())
		throw std::runtime_error("cannot read " + p.string());
	return s;
}

PrivKey import_privkey(const std::string &pem)
{
	PrivKey k;
	check(gnutls_privkey_init(k.out()), "privkey_init");
	gnutls_datum_t d = as_datum(pem.data(), pem.size());
	check(gnutls_privkey_import_x509_raw(k.get(), &d, GNUTLS_X509_FMT_PEM, nullptr, 0), "import key");
	return k;
}

} /* namespace */

const std::string &test_privkey_pem(const std::string &name, PkType t)
{
	static std::mutex mu;
	static std::map<std::string, std::string> cache;
	std::lock_guard<std::mutex> lock(mu);
	std::string id = "pki-" + name + "-" + pk_info(t).name;
	if (auto it = cache.find(id); it != cache.end())
		return it->second;
	fs::path dir = cached_dir(id, [&](const std::string &d) { generate_privkey(d, t); });
	return cache[id] = read_text(dir / "key.pem");
}

std::span<const uint8_t> bytes_of(const std::string &s)
{
	return {reinterpret_cast<const uint8_t *>(s.data()), s.size()};
}

TestCert make_cert(const CertSpec &spec)
{
	return make_cert_with_key(spec, test_privkey_pem(spec.key_name.empty() ? spec.cn : spec.key_name, spec.type));
}

TestCert make_cert_with_key(const CertSpec &spec, const std::string &key_pem)
{
	TestCert out = make_cert_for(spec, import_privkey(key_pem));
	out.key_pem = key_pem;
	return out;
}

TestCert make_cert_for(const CertSpec &spec, const PrivKey &key)
{
	TestCert out;
	PubKey pub;
	check(gnutls_pubkey_init(pub.out()), "pubkey_init");
	check(gnutls_pubkey_import_privkey(pub.get(), key.get(), 0, 0), "pubkey of key");

	X509Crt crt;
	check(gnutls_x509_crt_init(crt.out()), "crt_init");
	unsigned char serial[12];
	check(gnutls_rnd(GNUTLS_RND_NONCE, serial, sizeof(serial)), "rnd");
	serial[0] &= 0x7f;
	time_t now = time(nullptr);
	check(gnutls_x509_crt_set_version(crt.get(), 3), "set_version");
	check(gnutls_x509_crt_set_serial(crt.get(), serial, sizeof(serial)), "set_serial");
	check(gnutls_x509_crt_set_activation_time(crt.get(), now + spec.not_before), "activation");
	check(gnutls_x509_crt_set_expiration_time(crt.get(), now + spec.not_after), "expiration");
	const char *err = nullptr;
	check(gnutls_x509_crt_set_dn(crt.get(), ("CN=" + spec.cn).c_str(), &err), "set_dn");
	check(gnutls_x509_crt_set_pubkey(crt.get(), pub.get()), "set_pubkey");
	if (spec.basic_constraints)
		check(gnutls_x509_crt_set_basic_constraints(crt.get(), spec.ca, -1), "basic_constraints");
	if (spec.key_usage)
		check(gnutls_x509_crt_set_key_usage(crt.get(), spec.key_usage), "key_usage");
	if (spec.padding) {
		std::vector<uint8_t> pad(spec.padding, 0x5a);
		check(gnutls_x509_crt_set_extension_by_oid(crt.get(), "1.3.6.1.4.1.55555.1", pad.data(), pad.size(), 0),
		      "padding extension");
	}

	/* Key identifiers as real CAs write them: they tell apart issuers with the same name. */
	unsigned char kid[64];
	size_t kid_len = sizeof(kid);
	check(gnutls_pubkey_get_key_id(pub.get(), GNUTLS_KEYID_USE_SHA1, kid, &kid_len), "key id");
	check(gnutls_x509_crt_set_subject_key_id(crt.get(), kid, kid_len), "subject key id");

	X509Crt issuer;
	PrivKey issuer_key;
	if (spec.issuer) {
		check(gnutls_x509_crt_init(issuer.out()), "crt_init");
		gnutls_datum_t d = as_datum(spec.issuer->der.data(), spec.issuer->der.size());
		check(gnutls_x509_crt_import(issuer.get(), &d, GNUTLS_X509_FMT_DER), "import issuer");
		issuer_key = import_privkey(spec.issuer->key_pem);
		unsigned critical = 0;
		kid_len = sizeof(kid);
		check(gnutls_x509_crt_get_subject_key_id(issuer.get(), kid, &kid_len, &critical), "issuer key id");
		check(gnutls_x509_crt_set_authority_key_id(crt.get(), kid, kid_len), "authority key id");
	}
	gnutls_x509_crt_t signer_crt = spec.issuer ? issuer.get() : crt.get();
	gnutls_privkey_t signer_key = spec.issuer ? issuer_key.get() : key.get();
	/* Ed25519 hashes with SHA-512 internally and takes no other. */
	gnutls_digest_algorithm_t dig = gnutls_privkey_get_pk_algorithm(signer_key, nullptr) == GNUTLS_PK_EDDSA_ED25519
						? GNUTLS_DIG_SHA512
						: GNUTLS_DIG_SHA256;
	check(gnutls_x509_crt_privkey_sign(crt.get(), signer_crt, signer_key, dig, 0), "sign");

	Datum der, pem;
	check(gnutls_x509_crt_export2(crt.get(), GNUTLS_X509_FMT_DER, der.out()), "export der");
	check(gnutls_x509_crt_export2(crt.get(), GNUTLS_X509_FMT_PEM, pem.out()), "export pem");
	out.der.assign(der.data(), der.data() + der.size());
	out.pem.assign(reinterpret_cast<const char *>(pem.data()), pem.size());
	return out;
}

TestCert make_ca(const std::string &cn, const TestCert *issuer, PkType type, int64_t not_after)
{
	CertSpec s;
	s.cn = cn;
	s.type = type;
	s.ca = true;
	s.not_after = not_after;
	s.key_usage = kCaUsage;
	s.issuer = issuer;
	return make_cert(s);
}

} /* namespace criusec::test */
