/*
 * criusec-format-helper: the engine's side of the Python cross-check
 * (tests/criusec_ref.py).  Uses the C API except for the documented test
 * vectors, which need a fixed master key.
 *
 *   export DIR AEAD CERT [SIGN_KEY SIGN_CERT]   new checkpoint for CERT (signed
 *                            with SIGN_KEY if given): DIR/header.txt and
 *                            DIR/{stream,plain,label}-N
 *   open DIR KEY KIND NAME IN OUT [TRUST]   check DIR/header.txt (signature;
 *                            with TRUST, trusted), import it with KEY, open IN
 *   vectors STREAM1 STREAM2 BIG1 BIG2 CANONICAL MAC   check the doc vectors
 *   vectors2 KEY V...        check the format-2 doc vectors (section 10.9)
 *   reject KEY WRAPPED       print what an unwrap of WRAPPED (hex) gives
 *                            (the implicit-rejection substitute of a bad one)
 *   pages seal|open NAME VADDR INDEX IN OUT TAGS   the page cipher under the
 *                            doc vectors' master key (open reads TAGS)
 *   regions seal|open ALG NAME VADDR IN OUT INDEX   a page image of a checkpoint
 *                            that compresses with ALG, from page 0 (section 11.3)
 * export compresses with $CRIUSEC_HELPER_COMPRESS (lz4, zstd) when set.
 */
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "capi_internal.h"
#include "criusec.h"
#include "ctx.h"
#include "pages.h"
#include "pki.h"
#include "sign.h"
#include "stream.h"
#include "test_util.h"

using namespace criusec;
using criusec::test::hex;
using criusec::test::to_hex;

namespace {

int die(const std::string &msg)
{
	std::fprintf(stderr, "criusec-format-helper: %s\n", msg.c_str());
	return 1;
}

void write_file(const std::string &path, const void *p, size_t n)
{
	std::ofstream f(path, std::ios::binary);
	f.write(static_cast<const char *>(p), static_cast<std::streamsize>(n));
}

std::vector<uint8_t> read_file(const std::string &path)
{
	std::ifstream f(path, std::ios::binary);
	return {std::istreambuf_iterator<char>(f), {}};
}

int do_export(const std::string &dir, const char *aead_name, const char *cert, const char *sign_key,
	      const char *sign_cert)
{
	criusec_aead aead;
	if (criusec_aead_parse(aead_name, &aead))
		return die(criusec_last_error());
	criusec_ctx *ctx = criusec_ctx_new(aead);
	if (!ctx || criusec_ctx_add_recipient(ctx, cert, 0))
		return die(criusec_last_error());
	const char *comp = getenv("CRIUSEC_HELPER_COMPRESS");
	criusec_compress alg = CRIUSEC_COMPRESS_NONE;
	if (comp && *comp && (criusec_compress_parse(comp, &alg) || criusec_ctx_set_compress(ctx, alg)))
		return die(criusec_last_error());
	criusec_header h;
	uint8_t manifest[CRIUSEC_DIGEST_LEN];
	for (size_t i = 0; i < sizeof(manifest); i++)
		manifest[i] = static_cast<uint8_t>(0xc0 + i);
	criusec_signer *signer = nullptr;
	if (sign_key && !(signer = criusec_signer_load(sign_key, sign_cert)))
		return die(criusec_last_error());
	if (criusec_ctx_seal_header(ctx, signer, manifest) || criusec_ctx_export(ctx, &h))
		return die(criusec_last_error());
	std::ofstream f(dir + "/header.txt");
	f << "version " << h.version << "\n"
	  << "ckpt_id " << to_hex(h.ckpt_id, 16) << "\n"
	  << "has_parent " << h.has_parent << "\n"
	  << "parent_id " << to_hex(h.parent_id, 16) << "\n"
	  << "aead " << h.aead << "\n"
	  << "chunk_size " << h.chunk_size << "\n";
	for (size_t i = 0; i < h.n_recipients; i++)
		f << "recipient " << to_hex(h.recipients[i].fingerprint, 32) << " " << h.recipients[i].wrap_alg << " "
		  << to_hex(h.recipients[i].wrapped, h.recipients[i].wrapped_len) << "\n";
	f << "created " << h.created << "\n"
	  << "manifest_digest " << to_hex(h.manifest_digest, 32) << "\n"
	  << "parent_binding " << to_hex(h.parent_binding, 32) << "\n"
	  << "sig_alg " << h.sig_alg << "\n"
	  << "compress " << h.compress << "\n";
	for (size_t i = 0; i < h.n_signer_certs; i++)
		f << "signer_cert " << to_hex(h.signer_certs[i].data, h.signer_certs[i].len) << "\n";
	f << "signature " << to_hex(h.signature.data, h.signature.len) << "\n";
	f << "mac " << to_hex(h.mac, 32) << "\n";
	f.close();

	struct Case {
		const char *kind, *name;
		size_t len;
	} cases[] = {{"core", "core-1.img", 0},	       {"core", "core-2.img", 1},	  {"mm", "mm-1.img", 65535},
		     {"core", "core-3.img", 65536},    {"pages", "pages-1.img", 65537}, {"pipes-data", "p.img", 131072},
		     {"ghost-file", "g.img", 200007}};
	int n = 0;
	for (const auto &c : cases) {
		auto pt = criusec::test::pattern(c.len, static_cast<uint32_t>(n));
		std::string sfx = std::to_string(n++);
		uint8_t *out = nullptr;
		size_t out_len = 0;
		if (n % 2) {
			if (criusec_stream_seal_buf(ctx, c.kind, c.name, pt.data(), pt.size(), &out, &out_len, nullptr))
				return die(criusec_last_error());
			write_file(dir + "/stream-" + sfx, out, out_len);
			free(out);
		} else {
			write_file(dir + "/plain-tmp", pt.data(), pt.size());
			int in = open((dir + "/plain-tmp").c_str(), O_RDONLY);
			int o = open((dir + "/stream-" + sfx).c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
			if (criusec_stream_seal_fd(ctx, c.kind, c.name, in, o, nullptr))
				return die(criusec_last_error());
			close(in);
			close(o);
			unlink((dir + "/plain-tmp").c_str());
		}
		write_file(dir + "/plain-" + sfx, pt.data(), pt.size());
		std::string label = std::string(c.kind) + " " + c.name + "\n";
		write_file(dir + "/label-" + sfx, label.data(), label.size());
	}
	criusec_ctx_free(ctx);
	criusec_signer_free(signer);
	return 0;
}

int do_open(const std::string &dir, const char *key, const char *kind, const char *name, const char *in_path,
	    const char *out_path, const char *trust_path)
{
	criusec_header h{};
	std::vector<criusec_recipient> rs;
	std::vector<std::vector<uint8_t>> wrapped, certs;
	std::vector<uint8_t> signature;
	std::ifstream f(dir + "/header.txt");
	std::string line;
	while (std::getline(f, line)) {
		std::istringstream ls(line);
		std::string k, v;
		ls >> k >> v;
		auto copy = [&](uint8_t *dst, size_t n) {
			auto b = hex(v);
			std::memcpy(dst, b.data(), std::min(n, b.size()));
		};
		if (k == "version")
			h.version = static_cast<uint32_t>(std::stoul(v));
		else if (k == "ckpt_id")
			copy(h.ckpt_id, 16);
		else if (k == "has_parent")
			h.has_parent = std::stoi(v);
		else if (k == "parent_id")
			copy(h.parent_id, 16);
		else if (k == "aead")
			h.aead = static_cast<uint32_t>(std::stoul(v));
		else if (k == "chunk_size")
			h.chunk_size = static_cast<uint32_t>(std::stoul(v));
		else if (k == "mac")
			copy(h.mac, 32);
		else if (k == "created")
			h.created = std::stoull(v);
		else if (k == "manifest_digest")
			copy(h.manifest_digest, 32);
		else if (k == "parent_binding")
			copy(h.parent_binding, 32);
		else if (k == "sig_alg")
			h.sig_alg = static_cast<uint32_t>(std::stoul(v));
		else if (k == "compress")
			h.compress = static_cast<uint32_t>(std::stoul(v));
		else if (k == "signer_cert")
			certs.push_back(hex(v));
		else if (k == "signature")
			signature = hex(v);
		else if (k == "recipient") {
			criusec_recipient r{};
			copy(r.fingerprint, 32);
			std::string alg, w;
			ls >> alg >> w;
			r.wrap_alg = static_cast<uint32_t>(std::stoul(alg));
			wrapped.push_back(hex(w));
			rs.push_back(r);
		}
	}
	for (size_t i = 0; i < rs.size(); i++) {
		rs[i].wrapped = wrapped[i].data();
		rs[i].wrapped_len = wrapped[i].size();
	}
	h.recipients = rs.data();
	h.n_recipients = rs.size();
	std::vector<criusec_blob> blobs;
	for (const auto &c : certs)
		blobs.push_back({c.data(), c.size()});
	h.signer_certs = blobs.data();
	h.n_signer_certs = blobs.size();
	h.signature = {signature.data(), signature.size()};

	criusec_policy policy{};
	criusec_trust *trust = criusec_trust_new();
	if (trust_path && criusec_trust_add_file(trust, trust_path))
		return die(criusec_last_error());
	policy.trust = trust;
	criusec_verdict verdict;
	if (criusec_header_check(&h, &policy, &verdict))
		return die(criusec_last_error());
	if (trust_path && !verdict.trusted)
		return die("not trusted");
	criusec_trust_free(trust);
	criusec_ctx *ctx = criusec_ctx_import(&h, key);
	if (!ctx)
		return die(criusec_last_error());
	int in = open(in_path, O_RDONLY);
	int out = open(out_path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	if (criusec_stream_open_fd(ctx, kind, name, in, out, nullptr))
		return die(criusec_last_error());
	close(in);
	close(out);
	criusec_ctx_free(ctx);
	return 0;
}

/* The documented vectors' master key (00..1f) and checkpoint id (10..1f). */
void doc_key(std::vector<uint8_t> &mk, Id &id)
{
	mk.resize(32);
	for (int i = 0; i < 32; i++)
		mk[i] = static_cast<uint8_t>(i);
	for (int i = 0; i < 16; i++)
		id[i] = static_cast<uint8_t>(0x10 + i);
}

int do_vectors(char **v)
{
	std::vector<uint8_t> mk;
	Id id;
	doc_key(mk, id);
	std::string small = "criusec test vector\n";
	std::vector<uint8_t> big(10000);
	for (size_t i = 0; i < big.size(); i++)
		big[i] = static_cast<uint8_t>(i % 251);

	for (int a = 0; a < 2; a++) {
		AeadAlg alg = a == 0 ? AeadAlg::Aes256Gcm : AeadAlg::ChaCha20Poly1305;
		auto ctx = Ctx::from_master_key(mk, id, alg, 4096);
		if (!ctx.ok())
			return die(ctx.status().message());
		auto st = hex(v[a]);
		std::vector<uint8_t> out(st.size());
		auto n = open_buffer(ctx.value(), "core", "core-1.img", st, out);
		if (!n.ok() || std::string(out.begin(), out.begin() + n.value()) != small)
			return die("small vector " + std::to_string(a + 1) + ": " + n.status().message());
		auto bst = read_file(v[2 + a]);
		out.assign(bst.size(), 0);
		n = open_buffer(ctx.value(), "pages", "pages-1.img", bst, out);
		if (!n.ok() || !std::equal(big.begin(), big.end(), out.begin()) || n.value() != big.size())
			return die("big vector " + std::to_string(a + 1));
	}

	Id parent;
	for (int i = 0; i < 16; i++)
		parent[i] = static_cast<uint8_t>(0x30 + i);
	std::array<uint8_t, 32> fpr;
	fpr.fill(0xf0);
	std::vector<uint8_t> wrapped(8, 0x55);
	HeaderView hv;
	hv.version = 1;
	hv.ckpt_id = id;
	hv.parent = parent;
	hv.aead = 1;
	hv.chunk_size = 65536;
	hv.recipients.push_back({fpr, 1, wrapped});
	auto canon = canonical_header(hv);
	if (canon != hex(v[4]))
		return die("canonical header differs: " + to_hex(canon.data(), canon.size()));
	auto ctx = Ctx::from_master_key(mk, id, AeadAlg::Aes256Gcm, 65536);
	auto mac = ctx.value().mac_over(hv);
	if (!mac.ok() || to_hex(mac.value().data(), 32) != v[5])
		return die("header MAC differs");
	return 0;
}

/*
 * Section 10.9: v = parent_binding, unsigned_canonical2, unsigned_mac,
 * signer_cert, signed_canonical2_sha256, signature, signed_mac; key is the
 * vector signer's Ed25519 key (PEM), whose signatures are deterministic.
 */
int do_vectors2(const char *key, char **v)
{
	std::vector<uint8_t> mk;
	Id id;
	doc_key(mk, id);
	std::vector<uint8_t> pmk(32);
	Id pid;
	for (size_t i = 0; i < 32; i++)
		pmk[i] = static_cast<uint8_t>(0x40 + i);
	for (size_t i = 0; i < 16; i++)
		pid[i] = static_cast<uint8_t>(0x30 + i);
	auto parent = Ctx::from_master_key(pmk, pid, AeadAlg::Aes256Gcm, 65536);
	auto child = Ctx::from_master_key(mk, id, AeadAlg::Aes256Gcm, 65536);
	if (!parent.ok() || !child.ok())
		return die("contexts");
	if (!child.value().set_parent(parent.value()).ok())
		return die("binding");
	HeaderView hv = child.value().header();
	if (to_hex(hv.parent_binding.data(), 32) != v[0])
		return die("parent binding differs: " + to_hex(hv.parent_binding.data(), 32));

	std::array<uint8_t, 32> fpr;
	fpr.fill(0xf0);
	std::vector<uint8_t> wrapped(8, 0x55);
	HeaderView u;
	u.version = 2;
	u.ckpt_id = id;
	u.created = 1767225600;
	u.aead = 1;
	u.chunk_size = 65536;
	for (size_t i = 0; i < 32; i++)
		u.manifest_digest[i] = static_cast<uint8_t>(0xc0 + i);
	u.recipients.push_back({fpr, 1, wrapped});
	auto canon = canonical_header(u);
	if (to_hex(canon.data(), canon.size()) != v[1])
		return die("unsigned canonical2 differs: " + to_hex(canon.data(), canon.size()));
	auto mac = child.value().mac_over(u);
	if (!mac.ok() || to_hex(mac.value().data(), 32) != v[2])
		return die("unsigned MAC differs");

	/* The signed child: the engine's own signer must give the documented bytes. */
	auto pem = read_file(key);
	auto priv = privkey_load_pem(pem);
	if (!priv.ok())
		return die(priv.status().message());
	auto cert_der = hex(v[3]);
	gnutls_datum_t der = {cert_der.data(), static_cast<unsigned>(cert_der.size())};
	Datum cert_pem;
	if (gnutls_pem_base64_encode2("CERTIFICATE", &der, cert_pem.out()) < 0)
		return die("PEM encoding");
	/* The certificate is valid 2026-2036: sign as of its first day. */
	auto signer = Signer::create(std::move(priv).value(), {cert_pem.data(), cert_pem.size()}, 1767225600);
	if (!signer.ok())
		return die(signer.status().message());
	HeaderView s = u;
	s.parent = pid;
	s.parent_binding = hv.parent_binding;
	s.sig_alg = static_cast<uint32_t>(signer.value().alg());
	s.compress = CRIUSEC_COMPRESS_ZSTD;
	s.signer_certs.emplace_back(signer.value().chain().front());
	auto sc = canonical_header(s);
	Digest d;
	if (!sha256(sc, d).ok() || to_hex(d.data(), 32) != v[4])
		return die("signed canonical2 differs");
	auto sig = signer.value().sign(sc);
	if (!sig.ok() || to_hex(sig.value().data(), sig.value().size()) != v[5])
		return die("Ed25519 signature differs");
	s.signature = sig.value();
	if (!verify_signature(SigAlg::Ed25519, cert_der, sc, s.signature).ok())
		return die("the signature does not verify");
	auto smac = child.value().mac_over(s);
	if (!smac.ok() || to_hex(smac.value().data(), 32) != v[6])
		return die("signed MAC differs");
	return 0;
}

int do_reject(const char *key, const char *wrapped_hex)
{
	auto pem = read_file(key);
	auto priv = privkey_load_pem(pem);
	if (!priv.ok())
		return die(priv.status().message());
	std::array<uint8_t, 32> out{};
	if (!rsa_unwrap_implicit(priv.value(), hex(wrapped_hex), out).ok())
		return die("unwrap");
	std::printf("%s\n", to_hex(out.data(), out.size()).c_str());
	return 0;
}

int do_pages(const std::string &op, const char *name, const char *vaddr, const char *index, const char *in,
	     const char *out, const char *tags_path)
{
	std::vector<uint8_t> mk;
	Id id;
	doc_key(mk, id);
	auto ctx = Ctx::from_master_key(mk, id, AeadAlg::Aes256Gcm, 65536);
	if (!ctx.ok())
		return die(ctx.status().message());
	auto pc = PageCipher::create(ctx.value(), name);
	if (!pc.ok())
		return die(pc.status().message());
	auto data = read_file(in);
	std::vector<uint8_t> tags(data.size() / kPageSize * kPageTagLen);
	uint64_t v = std::stoull(vaddr, nullptr, 16), i = std::stoull(index);
	Status st;
	if (op == "seal") {
		st = pc.value().seal(v, i, data, tags);
		write_file(tags_path, tags.data(), tags.size());
	} else {
		tags = read_file(tags_path);
		st = pc.value().open(v, i, data, tags);
	}
	if (!st.ok())
		return die(st.message());
	write_file(out, data.data(), data.size());
	return 0;
}

int do_regions(const std::string &op, const char *alg_name, const char *name, const char *vaddr, const char *in,
	       const char *out, const char *index_path)
{
	std::vector<uint8_t> mk;
	Id id;
	doc_key(mk, id);
	criusec_compress alg;
	if (criusec_compress_parse(alg_name, &alg))
		return die(criusec_last_error());
	auto ctx = Ctx::from_master_key(mk, id, AeadAlg::Aes256Gcm, 65536);
	if (!ctx.ok() || !ctx.value().set_compress(static_cast<CompressAlg>(alg)).ok())
		return die("context");
	auto pool = PagePool::create(ctx.value(), name);
	if (!pool.ok())
		return die(pool.status().message());
	uint64_t v = std::stoull(vaddr, nullptr, 16);
	int fd = open(in, O_RDONLY);
	if (fd < 0)
		return die("can't open the input");
	Status st;
	if (op == "seal") {
		std::vector<uint8_t> sealed;
		auto sink = [&](std::span<const uint8_t> b) -> Status {
			sealed.insert(sealed.end(), b.begin(), b.end());
			return {};
		};
		struct stat sb;
		if (fstat(fd, &sb))
			return die("can't stat the input");
		/* Two runs, as two pagemap entries would be: pages 0..149, then the rest. */
		size_t first = std::min<size_t>(static_cast<size_t>(sb.st_size), 150 * kPageSize);
		st = pool.value().append_pipe(fd, sink, v, first);
		if (st.ok())
			st = pool.value().append_pipe(fd, sink, v + first, static_cast<size_t>(sb.st_size) - first);
		write_file(out, sealed.data(), sealed.size());
		write_file(index_path, pool.value().index().data(), pool.value().index().size());
	} else {
		auto index = read_file(index_path);
		off_t size = lseek(fd, 0, SEEK_END);
		st = pool.value().attach(index, static_cast<uint64_t>(size));
		std::vector<uint8_t> pt(pool.value().pages() * kPageSize);
		if (st.ok())
			st = pool.value().read(fd, v, 0, pt);
		if (st.ok())
			write_file(out, pt.data(), pt.size());
	}
	close(fd);
	if (!st.ok())
		return die(st.message());
	return 0;
}

} /* namespace */

int main(int argc, char **argv)
{
	std::string mode = argc > 1 ? argv[1] : "";
	if (mode == "export" && (argc == 5 || argc == 7))
		return do_export(argv[2], argv[3], argv[4], argc == 7 ? argv[5] : nullptr, argc == 7 ? argv[6] : nullptr);
	if (mode == "open" && (argc == 8 || argc == 9))
		return do_open(argv[2], argv[3], argv[4], argv[5], argv[6], argv[7], argc == 9 ? argv[8] : nullptr);
	if (mode == "reject" && argc == 4)
		return do_reject(argv[2], argv[3]);
	if (mode == "vectors2" && argc == 10)
		return do_vectors2(argv[2], argv + 3);
	if (mode == "vectors" && argc == 8)
		return do_vectors(argv + 2);
	if (mode == "regions" && argc == 9)
		return do_regions(argv[2], argv[3], argv[4], argv[5], argv[6], argv[7], argv[8]);
	if (mode == "pages" && argc == 9)
		return do_pages(argv[2], argv[3], argv[4], argv[5], argv[6], argv[7], argv[8]);
	return die("usage: export DIR AEAD CERT [SIGN_KEY SIGN_CERT] | open DIR KEY KIND NAME IN OUT [TRUST] |"
		   " vectors S1 S2 B1 B2 CANON MAC | vectors2 KEY V1..V7 | pages seal|open NAME VADDR INDEX IN OUT TAGS");
}
