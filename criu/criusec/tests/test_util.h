/* Helpers shared by the unit tests. */
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "criusec.h"
#include "aead.h"

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

} /* namespace criusec::test */
