/*
 * criusec-fuzz-seeds DIR: writes seed corpora for the fuzz targets into
 * DIR/stream, DIR/header, DIR/grant, DIR/decompress (valid inputs of every
 * shape, plus a few near-misses).
 */
#include <sys/stat.h>

#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "fuzz_common.h"
#include "compress.h"
#include "pages.h"
#include "stream.h"

namespace {

void put(const std::string &path, const std::vector<uint8_t> &v)
{
	std::ofstream f(path, std::ios::binary);
	f.write(reinterpret_cast<const char *>(v.data()), static_cast<std::streamsize>(v.size()));
}

} /* namespace */

int main(int argc, char **argv)
{
	if (argc != 2) {
		std::fprintf(stderr, "usage: criusec-fuzz-seeds DIR\n");
		return 2;
	}
	std::string dir = argv[1];
	mkdir(dir.c_str(), 0755);
	mkdir((dir + "/stream").c_str(), 0755);
	mkdir((dir + "/header").c_str(), 0755);
	mkdir((dir + "/grant").c_str(), 0755);

	int n = 0;
	for (auto alg : {criusec::AeadAlg::Aes256Gcm, criusec::AeadAlg::ChaCha20Poly1305}) {
		criusec_ctx *ctx = fuzz::fixed_ctx(alg);
		for (size_t len : {0, 1, 100, 4095, 4096, 4097, 8192, 3 * 4096 + 7}) {
			std::vector<uint8_t> pt(len);
			for (size_t i = 0; i < len; i++)
				pt[i] = static_cast<uint8_t>(i * 7);
			uint8_t *out;
			size_t out_len;
			if (criusec_stream_seal_buf(ctx, "core", "core-1.img", pt.data(), len, &out, &out_len, nullptr))
				return 1;
			std::vector<uint8_t> st(out, out + out_len);
			free(out);
			put(dir + "/stream/valid-" + std::to_string(n++), st);
			if (len == 0) {
				std::vector<uint8_t> g(CRIUSEC_GRANT_MAX);
				size_t glen;
				if (criusec_stream_grant(ctx, "pagemap", "pagemap-1.img", g.data(), &glen))
					return 1;
				g.resize(glen);
				put(dir + "/grant/valid-" + std::to_string(n), g);
			}
			if (len == 4097) {
				auto t = st;
				t.resize(28 + 4112); /* cut at the chunk boundary */
				put(dir + "/stream/truncated-" + std::to_string(n), t);
				st.push_back(0);
				put(dir + "/stream/extended-" + std::to_string(n), st);
			}
		}
		criusec_ctx_free(ctx);
	}
	put(dir + "/stream/plain", {0x54, 0x4c, 0x00, 0x54, 0x0a, 0x01});

	std::string cert = fuzz::write_temp(kFuzzCertPem, "cert");
	criusec_ctx *parent = fuzz::fixed_ctx(criusec::AeadAlg::Aes256Gcm);
	std::string key = fuzz::write_temp(kFuzzKeyPem, "key");
	criusec_signer *signer = criusec_signer_load(key.c_str(), cert.c_str());
	if (!signer)
		return 1;
	const uint8_t digest[CRIUSEC_DIGEST_LEN] = {0xd1};
	int m = 0;
	for (auto aead : {CRIUSEC_AEAD_AES_256_GCM, CRIUSEC_AEAD_CHACHA20_POLY1305})
		for (bool with_parent : {false, true}) {
			criusec_ctx *ctx = criusec_ctx_new(aead);
			criusec_header h;
			/* Signed with a parent, unsigned without: both kinds of seeds. */
			if (!ctx || (with_parent && criusec_ctx_set_parent(ctx, parent)) ||
			    criusec_ctx_add_recipient(ctx, cert.c_str(), 0) ||
			    criusec_ctx_seal_header(ctx, with_parent ? signer : nullptr, digest) ||
			    criusec_ctx_export(ctx, &h))
				return 1;
			put(dir + "/header/valid-" + std::to_string(m++), fuzz::serialize_header(h));
			/* a second, foreign stanza in front (MAC no longer matches) */
			criusec_recipient rs[2] = {h.recipients[0], h.recipients[0]};
			rs[0].fingerprint[0] ^= 0xff;
			h.recipients = rs;
			h.n_recipients = 2;
			put(dir + "/header/two-" + std::to_string(m++), fuzz::serialize_header(h));
			criusec_ctx_free(ctx);
		}
	criusec_ctx_free(parent);
	criusec_signer_free(signer);

	/* fuzz_decompress: byte 0 (algorithm, pages - 1), then a block of 1..4 text pages. */
	mkdir((dir + "/decompress").c_str(), 0755);
	int m2 = 0;
	for (int a = 0; a < 2; a++) {
		auto codec = criusec::BlockCodec::create(a ? criusec::CompressAlg::Zstd : criusec::CompressAlg::Lz4);
		if (!codec.ok())
			return 1;
		for (size_t nr = 1; nr <= 4; nr++) {
			std::vector<uint8_t> pt;
			for (size_t k = 0; pt.size() < nr * criusec::kPageSize; k++) {
				std::string line = "line " + std::to_string(k * 31) + " user=u" + std::to_string(k % 5) + "\n";
				pt.insert(pt.end(), line.begin(), line.end());
			}
			pt.resize(nr * criusec::kPageSize);
			std::vector<uint8_t> out(pt.size());
			auto c = codec.value().compress(pt, out);
			if (!c.ok() || !c.value())
				return 1;
			std::vector<uint8_t> seed{static_cast<uint8_t>(a | (nr - 1) << 1)};
			seed.insert(seed.end(), out.begin(), out.begin() + static_cast<long>(c.value()));
			put(dir + "/decompress/valid-" + std::to_string(m2++), seed);
		}
	}
	unlink(key.c_str());
	unlink(cert.c_str());
	std::printf("seeds written to %s/{stream,header,grant,decompress}\n", dir.c_str());
	return 0;
}
