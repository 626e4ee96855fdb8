/* Helpers shared by the unit tests. */
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <gnutls/gnutls.h>

#include "criusec.h"
#include "aead.h"
#include "gnutls_raii.h"

namespace criusec::test {

std::vector<uint8_t> hex(std::string_view s);
std::string to_hex(const uint8_t *p, size_t n);
std::vector<uint8_t> pattern(size_t n, uint32_t seed = 1);

/* A temporary directory removed (recursively) at destruction. */
class TempDir {
public:
	TempDir();
	~TempDir();
	TempDir(const TempDir &) = delete;
	TempDir &operator=(const TempDir &) = delete;
	const std::string &path() const { return path_; }
	std::string file(const std::string &name) const { return path_ + "/" + name; }

private:
	std::string path_;
};

struct KeyFiles {
	std::string cert; /* PEM X.509 certificate */
	std::string key;  /* PEM private key */
};

enum class KeyType { Rsa, Ecdsa };

/*
 * A self-signed certificate and its key, generated in-process with GnuTLS
 * on first use and cached under CRIUSEC_TEST_KEY_DIR/<name> (RSA
 * generation is slow and every test runs in its own process).
 */
const KeyFiles &test_key(const std::string &name, unsigned bits, KeyType type = KeyType::Rsa, bool pkcs8 = false);

/* A C handle with a chosen chunk size (the C API always uses 64 KiB). */
criusec_ctx *make_ctx(AeadAlg aead, uint32_t chunk_size);

/* A deep copy of an exported header that tests can tamper with. */
struct OwnedHeader {
	explicit OwnedHeader(const criusec_header &h);
	OwnedHeader(const OwnedHeader &o) : OwnedHeader(o.hdr) {}
	OwnedHeader &operator=(const OwnedHeader &) = delete;
	criusec_header hdr;
	std::vector<criusec_recipient> recipients;
	std::vector<std::vector<uint8_t>> wrapped;
	std::vector<std::vector<uint8_t>> certs;
	std::vector<criusec_blob> cert_blobs;
	std::vector<uint8_t> signature;
	/* Re-point hdr at recipients/wrapped/certs/signature after editing the vectors. */
	void fixup();
};

std::vector<uint8_t> read_fd_all(int fd);
void write_all(int fd, const std::vector<uint8_t> &data);

/*
 * An in-process test PKI for signing and trust (GnuTLS x509 APIs only).
 * Keys are generated once and cached like test_key(); certificates are
 * made fresh, with validity relative to the current time.
 */
enum class PkType { Rsa2048, Rsa1024, EcP256, EcP384, EcP521, Ed25519 };

/* The PKCS#8 PEM private key called name, of type t. */
const std::string &test_privkey_pem(const std::string &name, PkType t);

struct TestCert {
	std::vector<uint8_t> der;
	std::string pem;
	std::string key_pem; /* its private key */
};

constexpr unsigned kCaUsage = GNUTLS_KEY_KEY_CERT_SIGN | GNUTLS_KEY_CRL_SIGN;

struct CertSpec {
	std::string cn;
	PkType type = PkType::EcP256;
	std::string key_name; /* which cached key; empty: the CN */
	bool ca = false; /* basicConstraints CA:TRUE (else CA:FALSE) */
	bool basic_constraints = true; /* false: no basicConstraints extension */
	int64_t not_before = -3600; /* seconds from now */
	int64_t not_after = 365 * 86400; /* seconds from now */
	unsigned key_usage = GNUTLS_KEY_DIGITAL_SIGNATURE; /* 0: no keyUsage extension */
	size_t padding = 0; /* bytes of an extra, opaque extension (to make a big certificate) */
	const TestCert *issuer = nullptr; /* nullptr: self-signed */
};

TestCert make_cert(const CertSpec &spec);
/* The same for a given private key (PEM); spec.type and spec.key_name are not used. */
TestCert make_cert_with_key(const CertSpec &spec, const std::string &key_pem);
/* The same for a key loaded already (e.g. one in a token: key_pem stays empty). */
TestCert make_cert_for(const CertSpec &spec, const PrivKey &key);
/* A CA certificate: CA:TRUE, keyCertSign and cRLSign. */
TestCert make_ca(const std::string &cn, const TestCert *issuer = nullptr, PkType type = PkType::EcP256,
		 int64_t not_after = 10 * 365 * 86400);

std::span<const uint8_t> bytes_of(const std::string &s);

} /* namespace criusec::test */
