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
	X509Crt crt;
	check(gnutls_x509_privkey_init(key.out()), "privkey_init");
	check(gnutls_x509_crt_init(crt.out()), "crt_init");
	if (type == KeyType::Rsa)
		check(gnutls_x509_privkey_generate(key.get(), GNUTLS_PK_RSA, bits, 0), "generate RSA");
	else
		check(gnutls_x509_privkey_generate(key.get(), GNUTLS_PK_ECDSA,
						   GNUTLS_CURVE_TO_BITS(GNUTLS_ECC_CURVE_SECP256R1), 0),
		      "generate ECDSA");

	unsigned char serial[8];
	check(gnutls_rnd(GNUTLS_RND_NONCE, serial, sizeof(serial)), "rnd");
	serial[0] &= 0x7f;
	time_t now = time(nullptr);
	check(gnutls_x509_crt_set_version(crt.get(), 3), "set_version");
	check(gnutls_x509_crt_set_serial(crt.get(), serial, sizeof(serial)), "set_serial");
	check(gnutls_x509_crt_set_activation_time(crt.get(), now - 3600), "activation");
	check(gnutls_x509_crt_set_expiration_time(crt.get(), now + 3650L * 86400), "expiration");
	const char *err = nullptr;
	check(gnutls_x509_crt_set_dn(crt.get(), "CN=criusec test", &err), "set_dn");
	check(gnutls_x509_crt_set_key(crt.get(), key.get()), "set_key");
	check(gnutls_x509_crt_set_key_usage(crt.get(), GNUTLS_KEY_KEY_ENCIPHERMENT | GNUTLS_KEY_DIGITAL_SIGNATURE),
	      "key_usage");
	check(gnutls_x509_crt_sign2(crt.get(), crt.get(), key.get(), GNUTLS_DIG_SHA256, 0), "sign");

	Datum cert_pem;
	check(gnutls_x509_crt_export2(crt.get(), GNUTLS_X509_FMT_PEM, cert_pem.out()), "export crt");
	write_datum(dir + "/cert.pem", cert_pem.get());
	SecretDatum key_pem;
	if (pkcs8)
		check(gnutls_x509_privkey_export2_pkcs8(key.get(), GNUTLS_X509_FMT_PEM, nullptr, GNUTLS_PKCS_PLAIN,
							key_pem.out()),
		      "export pkcs8");
	else
		check(gnutls_x509_privkey_export2(key.get(), GNUTLS_X509_FMT_PEM, key_pem.out()), "export key");
	write_datum(dir + "/key.pem", key_pem.get());
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

	fs::path base = CRIUSEC_TEST_KEY_DIR;
	fs::create_directories(base);
	fs::path final_dir = base / id;
	if (!fs::exists(final_dir / "key.pem")) {
		/* Generate aside and rename into place: concurrent test processes never see half a pair. */
		std::string tmpl = (base / ".tmp-XXXXXX").string();
		if (!mkdtemp(tmpl.data()))
			throw std::runtime_error("mkdtemp failed");
		generate(tmpl, bits, type, pkcs8);
		if (rename(tmpl.c_str(), final_dir.c_str()) != 0)
			fs::remove_all(tmpl); /* someone else won the race */
	}
	return cache[id] = KeyFiles{(final_dir / "cert.pem").string(), (final_dir / "key.pem").string()};
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

} /* namespace criusec::test */
