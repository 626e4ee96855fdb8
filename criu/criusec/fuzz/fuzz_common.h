/*
 * Shared by the fuzz targets and the seed generator: the fixed contexts,
 * the fixed key file, and the length-prefixed layout that turns fuzz bytes
 * into a struct criusec_header.
 *
 * Header layout (big-endian; a short input leaves the rest zero and stops
 * the recipient list early):
 *   u32 version | id[16] | u8 has_parent | parent[16] | u32 aead |
 *   u32 chunk_size | mac[32] | u8 n | n x ( fpr[32] | u32 wrap_alg |
 *   u16 len | wrapped[len] ) | format 2: parent_binding[32] | u64 created |
 *   manifest_digest[32] | u32 sig_alg | u8 ncerts | ncerts x ( u16 len |
 *   der[len] ) | u16 len | signature[len] | u32 compress
 */
#pragma once

#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "capi_internal.h"
#include "criusec.h"
#include "ctx.h"
#include "fuzz_key.h"

namespace fuzz {

/* A context with a fixed master key and id; 4 KiB chunks so small inputs span several. */
inline criusec_ctx *fixed_ctx(criusec::AeadAlg alg)
{
	std::vector<uint8_t> mk(32);
	criusec::Id id;
	for (size_t i = 0; i < mk.size(); i++)
		mk[i] = static_cast<uint8_t>(0x40 + i);
	for (size_t i = 0; i < id.size(); i++)
		id[i] = static_cast<uint8_t>(0x90 + i);
	auto c = criusec::Ctx::from_master_key(mk, id, alg, 4096);
	if (!c.ok())
		abort();
	return new criusec_ctx(std::move(c).value());
}

inline std::string write_temp(const char *content, const char *tag)
{
	std::string path = std::string("/tmp/criusec-fuzz-") + tag + "-XXXXXX";
	int fd = mkstemp(path.data());
	if (fd < 0)
		abort();
	size_t n = strlen(content);
	if (write(fd, content, n) != static_cast<ssize_t>(n))
		abort();
	close(fd);
	return path;
}

struct ParsedHeader {
	criusec_header hdr{};
	std::vector<criusec_recipient> recipients;
	std::vector<criusec_blob> certs;
};

class Reader {
public:
	Reader(const uint8_t *p, size_t n) : p_(p), n_(n) {}
	bool get(void *dst, size_t len)
	{
		if (n_ < len)
			return false;
		std::memcpy(dst, p_, len);
		p_ += len;
		n_ -= len;
		return true;
	}
	uint32_t u32()
	{
		uint8_t b[4] = {};
		get(b, 4);
		return uint32_t(b[0]) << 24 | uint32_t(b[1]) << 16 | uint32_t(b[2]) << 8 | b[3];
	}
	size_t u16()
	{
		uint8_t b[2] = {};
		get(b, 2);
		return size_t(b[0]) << 8 | b[1];
	}
	/* A view of the next len bytes (fewer if the input ends). */
	const uint8_t *take(size_t &len)
	{
		if (len > n_)
			len = n_;
		const uint8_t *r = p_;
		p_ += len;
		n_ -= len;
		return r;
	}
	size_t left() const { return n_; }

private:
	const uint8_t *p_;
	size_t n_;
};

/* The recipients' wrapped keys point into data, which must outlive the result. */
inline ParsedHeader parse_header(const uint8_t *data, size_t size)
{
	ParsedHeader ph;
	Reader r(data, size);
	criusec_header &h = ph.hdr;
	h.version = r.u32();
	r.get(h.ckpt_id, sizeof(h.ckpt_id));
	uint8_t hp = 0;
	r.get(&hp, 1);
	h.has_parent = hp;
	r.get(h.parent_id, sizeof(h.parent_id));
	h.aead = r.u32();
	h.chunk_size = r.u32();
	r.get(h.mac, sizeof(h.mac));
	uint8_t n = 0;
	r.get(&n, 1);
	for (unsigned i = 0; i < n && r.left() > 0; i++) {
		criusec_recipient rc{};
		r.get(rc.fingerprint, sizeof(rc.fingerprint));
		rc.wrap_alg = r.u32();
		size_t len = r.u16();
		rc.wrapped = r.take(len);
		rc.wrapped_len = len;
		ph.recipients.push_back(rc);
	}
	h.recipients = ph.recipients.data();
	h.n_recipients = ph.recipients.size();

	r.get(h.parent_binding, sizeof(h.parent_binding));
	h.created = uint64_t(r.u32()) << 32;
	h.created |= r.u32();
	r.get(h.manifest_digest, sizeof(h.manifest_digest));
	h.sig_alg = r.u32();
	uint8_t nc = 0;
	r.get(&nc, 1);
	for (unsigned i = 0; i < nc && r.left() > 0; i++) {
		size_t len = r.u16();
		const uint8_t *d = r.take(len);
		ph.certs.push_back({d, len});
	}
	h.signer_certs = ph.certs.data();
	h.n_signer_certs = ph.certs.size();
	size_t sl = r.u16();
	h.signature.data = r.take(sl);
	h.signature.len = sl;
	h.compress = r.u32();
	return ph;
}

inline void put32(std::vector<uint8_t> &v, uint32_t x)
{
	for (int s = 24; s >= 0; s -= 8)
		v.push_back(static_cast<uint8_t>(x >> s));
}

inline void put16(std::vector<uint8_t> &v, size_t x)
{
	v.push_back(static_cast<uint8_t>(x >> 8));
	v.push_back(static_cast<uint8_t>(x));
}

inline std::vector<uint8_t> serialize_header(const criusec_header &h)
{
	std::vector<uint8_t> v;
	put32(v, h.version);
	v.insert(v.end(), h.ckpt_id, h.ckpt_id + sizeof(h.ckpt_id));
	v.push_back(static_cast<uint8_t>(h.has_parent));
	v.insert(v.end(), h.parent_id, h.parent_id + sizeof(h.parent_id));
	put32(v, h.aead);
	put32(v, h.chunk_size);
	v.insert(v.end(), h.mac, h.mac + sizeof(h.mac));
	v.push_back(static_cast<uint8_t>(h.n_recipients));
	for (size_t i = 0; i < h.n_recipients; i++) {
		const auto &r = h.recipients[i];
		v.insert(v.end(), r.fingerprint, r.fingerprint + sizeof(r.fingerprint));
		put32(v, r.wrap_alg);
		put16(v, r.wrapped_len);
		v.insert(v.end(), r.wrapped, r.wrapped + r.wrapped_len);
	}
	v.insert(v.end(), h.parent_binding, h.parent_binding + sizeof(h.parent_binding));
	put32(v, static_cast<uint32_t>(h.created >> 32));
	put32(v, static_cast<uint32_t>(h.created));
	v.insert(v.end(), h.manifest_digest, h.manifest_digest + sizeof(h.manifest_digest));
	put32(v, h.sig_alg);
	v.push_back(static_cast<uint8_t>(h.n_signer_certs));
	for (size_t i = 0; i < h.n_signer_certs; i++) {
		put16(v, h.signer_certs[i].len);
		v.insert(v.end(), h.signer_certs[i].data, h.signer_certs[i].data + h.signer_certs[i].len);
	}
	put16(v, h.signature.len);
	v.insert(v.end(), h.signature.data, h.signature.data + h.signature.len);
	put32(v, h.compress);
	return v;
}

} /* namespace fuzz */
