/*
 * The extern "C" layer (criusec.h).  Every entry point is noexcept: errors,
 * including std::bad_alloc, become a negative errno (or NULL) plus a
 * message in criusec_last_error().  Nothing here logs or prints.
 */
#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <exception>
#include <memory>
#include <new>
#include <string_view>
#include <vector>

#include "capi_internal.h"
#include "capi_testing.h"
#include "criusec.h"
#include "ctx.h"
#include "io.h"
#include "keyring.h"
#include "manifest.h"
#include "page_pipeline.h"
#include "pages.h"
#include "pkcs11.h"
#include "pki.h"
#include "policy.h"
#include "selftest.h"
#include "stream.h"

using namespace criusec;

namespace {

/* Certificates and keys are a few KiB; anything near this is not one. */
constexpr size_t kMaxPemSize = 1 << 20;

thread_local char g_last_error[512];
thread_local int g_last_errno; /* what the last guarded() returned */

void set_last_error(const char *msg) noexcept
{
	std::snprintf(g_last_error, sizeof(g_last_error), "%s", msg);
}

/* Run f (returning Status) and translate the outcome for C. */
template <typename F> int guarded(F &&f) noexcept
{
	g_last_error[0] = '\0';
	try {
		Status s = f();
		if (s.ok())
			return g_last_errno = 0;
		set_last_error(s.message().c_str());
		return g_last_errno = -s.err();
	} catch (const std::bad_alloc &) {
		set_last_error("out of memory");
		return g_last_errno = -ENOMEM;
	} catch (const std::exception &e) {
		set_last_error(e.what());
		return g_last_errno = -EIO;
	} catch (...) {
		set_last_error("internal error");
		return g_last_errno = -EIO;
	}
}

/* A malloc()ed buffer handed to C on success; wiped (if asked) and freed otherwise. */
class MallocBuffer {
public:
	MallocBuffer(size_t n, bool wipe) : n_(n), wipe_(wipe)
	{
		p_ = static_cast<uint8_t *>(std::malloc(n ? n : 1));
		if (!p_)
			throw std::bad_alloc();
	}
	MallocBuffer(const MallocBuffer &) = delete;
	MallocBuffer &operator=(const MallocBuffer &) = delete;
	~MallocBuffer()
	{
		if (p_) {
			if (wipe_)
				gnutls_memset(p_, 0, n_);
			std::free(p_);
		}
	}
	std::span<uint8_t> span() noexcept { return {p_, n_}; }
	uint8_t *release() noexcept { return std::exchange(p_, nullptr); }

private:
	uint8_t *p_;
	size_t n_;
	bool wipe_;
};

Status check_stream_args(const criusec_ctx *ctx, const char *kind, const char *name)
{
	if (!ctx || !kind || !name)
		return invalid_argument("NULL context, kind or name");
	return {};
}

Status check_buf_args(const void *in, size_t in_len, uint8_t **out, size_t *out_len)
{
	if (!out || !out_len)
		return invalid_argument("NULL output pointer");
	*out = nullptr;
	*out_len = 0;
	if (!in && in_len)
		return invalid_argument("NULL input with non-zero length");
	return {};
}

/*
 * A C caller may pass any int as an enum; in C++ an out-of-range enum value
 * is undefined, so look at its bytes (by reference: no enum load at all).
 */
uint32_t enum_value(const enum criusec_aead &e) noexcept
{
	static_assert(sizeof(e) == sizeof(uint32_t));
	uint32_t v;
	std::memcpy(&v, &e, sizeof(v));
	return v;
}

std::span<const uint8_t> in_span(const void *in, size_t len) noexcept
{
	return {static_cast<const uint8_t *>(in), in ? len : 0};
}

void to_c(const StreamInfo &si, criusec_stream_info *out) noexcept
{
	if (!out)
		return;
	out->size = si.size;
	out->has_size = si.has_size;
	std::memcpy(out->digest, si.digest.data(), sizeof(out->digest));
}

StreamInfo from_c(const criusec_stream_info *in) noexcept
{
	StreamInfo si;
	if (in) {
		si.size = in->size;
		si.has_size = in->has_size != 0;
		std::memcpy(si.digest.data(), in->digest, si.digest.size());
	}
	return si;
}

} /* namespace */

struct criusec_pages {
	explicit criusec_pages(PagePool c) : cipher(std::move(c)) {}
	PagePool cipher;
};

struct criusec_signer {
	Signer signer;
};

struct criusec_pagemap_digest {
	explicit criusec_pagemap_digest(uint64_t id) : d(id) {}
	PagemapDigest d;
};

struct criusec_trust {
	TrustStore store;
	std::vector<std::string> subjects; /* for criusec_trust_subject() */
};

static Status to_sink(criusec_pages_sink sink, void *sink_arg, std::span<const uint8_t> data)
{
	if (sink(sink_arg, data.data(), data.size()) == 0)
		return {};
	int e = errno;
	return Status::error(e, "can't write pages: " + errno_string(e));
}

Status header_view(const criusec_header *hdr, HeaderView &v)
{
	if (!hdr)
		return invalid_argument("NULL header");
	/* Memory safety first: never walk an implausible array. */
	if (hdr->n_recipients > kMaxRecipients)
		return bad_data("cipher.img header has too many recipients");
	if (hdr->n_recipients && !hdr->recipients)
		return invalid_argument("NULL recipient array");
	if (hdr->n_signer_certs > kMaxSignerCerts)
		return bad_data("cipher.img header has too many signer certificates");
	if (hdr->n_signer_certs && !hdr->signer_certs)
		return invalid_argument("NULL signer certificate array");
	if (hdr->has_parent != 0 && hdr->has_parent != 1)
		return bad_data("cipher.img header: has_parent must be 0 or 1");

	v.version = hdr->version;
	std::memcpy(v.ckpt_id.data(), hdr->ckpt_id, kIdLen);
	if (hdr->has_parent) {
		v.parent.emplace();
		std::memcpy(v.parent->data(), hdr->parent_id, kIdLen);
		std::memcpy(v.parent_binding.data(), hdr->parent_binding, kMacLen);
	}
	v.aead = hdr->aead;
	v.chunk_size = hdr->chunk_size;
	v.compress = hdr->compress;
	v.created = hdr->created;
	std::memcpy(v.manifest_digest.data(), hdr->manifest_digest, kSha256Len);
	std::memcpy(v.mac.data(), hdr->mac, kMacLen);
	v.recipients.reserve(hdr->n_recipients);
	for (size_t i = 0; i < hdr->n_recipients; i++) {
		const criusec_recipient &r = hdr->recipients[i];
		if (r.wrapped_len && !r.wrapped)
			return invalid_argument("NULL wrapped key");
		v.recipients.push_back({std::span<const uint8_t, kFprLen>(r.fingerprint, kFprLen), r.wrap_alg,
					std::span<const uint8_t>(r.wrapped, r.wrapped ? r.wrapped_len : 0)});
	}
	v.sig_alg = hdr->sig_alg;
	for (size_t i = 0; i < hdr->n_signer_certs; i++) {
		const criusec_blob &b = hdr->signer_certs[i];
		if (b.len && !b.data)
			return invalid_argument("NULL signer certificate");
		v.signer_certs.emplace_back(b.data, b.data ? b.len : 0);
	}
	if (hdr->signature.len && !hdr->signature.data)
		return invalid_argument("NULL signature");
	v.signature = {hdr->signature.data, hdr->signature.data ? hdr->signature.len : 0};
	return {};
}

/*
 * The library is built with -fvisibility=hidden; only the C API is public,
 * so that it can be re-exported if libcriusec.a ever goes into a .so.
 * No definition below may throw: each fallible body runs inside guarded(),
 * and the rest cannot throw.  (criusec.h, a C header, cannot say noexcept.)
 */
#pragma GCC visibility push(default)
extern "C" {

const char *criusec_version(void)
{
	/* Writes format 2, reads 1 and 2. */
	return "criusec " CRIUSEC_ENGINE_VERSION " (formats 1, 2)";
}

const char *criusec_last_error(void)
{
	return g_last_error;
}

int criusec_last_errno(void)
{
	return g_last_errno;
}

int criusec_self_test(void)
{
	return guarded([] { return self_test(); });
}

enum criusec_aead criusec_default_aead(void)
{
	return static_cast<enum criusec_aead>(default_aead());
}

const char *criusec_aead_name(enum criusec_aead aead)
{
	uint32_t v = enum_value(aead);
	if (v == CRIUSEC_AEAD_AUTO)
		return "auto";
	auto a = aead_from_wire(v);
	return a ? aead_name(*a) : "unknown";
}

const char *criusec_compress_name(uint32_t alg)
{
	auto a = compress_from_wire(alg);
	return a ? compress_name(*a) : nullptr;
}

int criusec_compress_parse(const char *name, enum criusec_compress *out)
{
	return guarded([&]() -> Status {
		if (!name || !out)
			return invalid_argument("NULL argument");
		for (uint32_t v : {CRIUSEC_COMPRESS_NONE, CRIUSEC_COMPRESS_LZ4, CRIUSEC_COMPRESS_ZSTD})
			if (std::string_view(name) == compress_name(*compress_from_wire(v))) {
				*out = static_cast<enum criusec_compress>(v);
				return {};
			}
		return invalid_argument(std::string("unknown compression algorithm '") + name +
					"' (lz4, zstd or none)");
	});
}

enum criusec_compress criusec_default_compress(void)
{
	return CRIUSEC_COMPRESS_ZSTD;
}

int criusec_aead_parse(const char *name, enum criusec_aead *out)
{
	return guarded([&]() -> Status {
		if (!name || !out)
			return invalid_argument("NULL argument");
		std::string_view n(name);
		if (n == "auto")
			*out = CRIUSEC_AEAD_AUTO;
		else if (n == "aes-256-gcm")
			*out = CRIUSEC_AEAD_AES_256_GCM;
		else if (n == "chacha20-poly1305")
			*out = CRIUSEC_AEAD_CHACHA20_POLY1305;
		else
			return invalid_argument("unknown AEAD \"" + std::string(n) +
						"\" (expected aes-256-gcm, chacha20-poly1305 or auto)");
		return {};
	});
}

struct criusec_ctx *criusec_ctx_new(enum criusec_aead aead)
{
	criusec_ctx *ret = nullptr;
	guarded([&]() -> Status {
		uint32_t v = enum_value(aead);
		std::optional<AeadAlg> alg = v == CRIUSEC_AEAD_AUTO ? default_aead() : aead_from_wire(v);
		if (!alg)
			return invalid_argument("unknown AEAD " + std::to_string(v));
		auto c = Ctx::create(*alg);
		if (!c.ok())
			return std::move(c).status();
		auto handle = std::make_unique<criusec_ctx>(std::move(c).value());
		handle->page_ids = std::make_unique<PageIds>();
		ret = handle.release();
		return {};
	});
	return ret;
}

int criusec_ctx_claim_pages_id(struct criusec_ctx *ctx, uint32_t id)
{
	return guarded([&]() -> Status {
		if (!ctx || !ctx->page_ids)
			return invalid_argument("not a dump's context");
		return ctx->page_ids->claim(id);
	});
}

int criusec_ctx_set_parent(struct criusec_ctx *ctx, const struct criusec_ctx *parent)
{
	return guarded([&]() -> Status {
		if (!ctx || !parent)
			return invalid_argument("NULL context or parent");
		return ctx->ctx.set_parent(parent->ctx);
	});
}

int criusec_ctx_check_parent(const struct criusec_ctx *ctx, const struct criusec_ctx *parent)
{
	return guarded([&]() -> Status {
		if (!ctx || !parent)
			return invalid_argument("NULL context or parent");
		return ctx->ctx.check_parent(parent->ctx);
	});
}

int criusec_ctx_add_recipient(struct criusec_ctx *ctx, const char *cert_pem_path, unsigned flags)
{
	return guarded([&]() -> Status {
		if (!ctx || !cert_pem_path)
			return invalid_argument("NULL context or certificate path");
		auto pem = read_small_file(cert_pem_path, kMaxPemSize);
		if (!pem.ok())
			return std::move(pem).status();
		auto now = static_cast<uint64_t>(std::time(nullptr));
		return ctx->ctx.add_recipient(pem.value().span(), now, flags & CRIUSEC_RECIPIENT_UNCHECKED)
			.with_context(cert_pem_path);
	});
}

int criusec_ctx_seal_header(struct criusec_ctx *ctx, struct criusec_signer *signer,
			    const uint8_t manifest_digest[CRIUSEC_DIGEST_LEN])
{
	return guarded([&]() -> Status {
		if (!ctx || !manifest_digest)
			return invalid_argument("NULL context or manifest digest");
		Digest d;
		std::memcpy(d.data(), manifest_digest, d.size());
		auto now = static_cast<uint64_t>(std::time(nullptr));
		return ctx->ctx.seal_header(signer ? &signer->signer : nullptr, d, now);
	});
}

int criusec_ctx_export(struct criusec_ctx *ctx, struct criusec_header *hdr)
{
	return guarded([&]() -> Status {
		if (!ctx || !hdr)
			return invalid_argument("NULL context or header");
		const Ctx &c = ctx->ctx;
		if (!c.sealed())
			return invalid_argument("the header is not sealed yet (criusec_ctx_seal_header)");
		HeaderView v = c.header();

		ctx->exported.assign(v.recipients.size(), {});
		for (size_t i = 0; i < v.recipients.size(); i++) {
			std::memcpy(ctx->exported[i].fingerprint, v.recipients[i].fpr.data(), kFprLen);
			ctx->exported[i].wrap_alg = v.recipients[i].wrap_alg;
			ctx->exported[i].wrapped = v.recipients[i].wrapped.data();
			ctx->exported[i].wrapped_len = v.recipients[i].wrapped.size();
		}
		ctx->exported_certs.clear();
		for (const auto &cert : v.signer_certs)
			ctx->exported_certs.push_back({cert.data(), cert.size()});

		std::memset(hdr, 0, sizeof(*hdr));
		hdr->version = v.version;
		std::memcpy(hdr->ckpt_id, v.ckpt_id.data(), kIdLen);
		hdr->has_parent = v.parent.has_value();
		if (v.parent) {
			std::memcpy(hdr->parent_id, v.parent->data(), kIdLen);
			std::memcpy(hdr->parent_binding, v.parent_binding.data(), kMacLen);
		}
		hdr->aead = v.aead;
		hdr->chunk_size = v.chunk_size;
		hdr->compress = v.compress;
		hdr->n_recipients = ctx->exported.size();
		hdr->recipients = ctx->exported.data();
		hdr->created = v.created;
		std::memcpy(hdr->manifest_digest, v.manifest_digest.data(), kSha256Len);
		hdr->sig_alg = v.sig_alg;
		hdr->n_signer_certs = ctx->exported_certs.size();
		hdr->signer_certs = ctx->exported_certs.data();
		hdr->signature = {v.signature.data(), v.signature.size()};
		std::memcpy(hdr->mac, v.mac.data(), kMacLen);
		return {};
	});
}

struct criusec_ctx *criusec_ctx_import(const struct criusec_header *hdr, const char *key)
{
	criusec_ctx *ret = nullptr;
	guarded([&]() -> Status {
		if (!hdr || !key)
			return invalid_argument("NULL header or key");
		HeaderView v;
		CRIUSEC_TRY(header_view(hdr, v));
		/* Before the key is loaded: a token is not asked for a malformed header. */
		CRIUSEC_TRY(check_structure(v));
		auto priv = load_private_key(key);
		if (!priv.ok())
			return std::move(priv).status();
		auto c = Ctx::import(v, priv.value());
		if (!c.ok())
			return std::move(c).status();
		ret = new criusec_ctx(std::move(c).value());
		return {};
	});
	return ret;
}

int criusec_ctx_chain_secret(const struct criusec_ctx *ctx, uint8_t out[CRIUSEC_CHAIN_SECRET_LEN])
{
	return guarded([&]() -> Status {
		if (!ctx || !out)
			return invalid_argument("NULL context or output");
		auto sec = ctx->ctx.chain_secret();
		if (sec.size() != CRIUSEC_CHAIN_SECRET_LEN)
			return invalid_argument("the context has no chain secret");
		std::memcpy(out, sec.data(), sec.size());
		return {};
	});
}

struct criusec_ctx *criusec_ctx_import_secret(const struct criusec_header *hdr,
					      const uint8_t secret[CRIUSEC_CHAIN_SECRET_LEN])
{
	criusec_ctx *ret = nullptr;
	guarded([&]() -> Status {
		if (!hdr || !secret)
			return invalid_argument("NULL header or secret");
		HeaderView v;
		CRIUSEC_TRY(header_view(hdr, v));
		auto c = Ctx::import_secret(v, {secret, CRIUSEC_CHAIN_SECRET_LEN});
		if (!c.ok())
			return std::move(c).status();
		ret = new criusec_ctx(std::move(c).value());
		return {};
	});
	return ret;
}

void criusec_ctx_free(struct criusec_ctx *ctx)
{
	delete ctx; /* SecureBytes members wipe the keys */
}

const uint8_t *criusec_ctx_id(const struct criusec_ctx *ctx)
{
	return ctx ? ctx->ctx.id().data() : nullptr;
}

int criusec_ctx_set_compress(struct criusec_ctx *ctx, enum criusec_compress alg)
{
	return guarded([&]() -> Status {
		if (!ctx)
			return invalid_argument("NULL context");
		auto a = compress_from_wire(static_cast<uint32_t>(alg));
		if (!a)
			return invalid_argument("unknown compression " + std::to_string(static_cast<uint32_t>(alg)));
		return ctx->ctx.set_compress(*a);
	});
}

enum criusec_aead criusec_ctx_aead(const struct criusec_ctx *ctx)
{
	return ctx ? static_cast<enum criusec_aead>(ctx->ctx.aead()) : CRIUSEC_AEAD_AUTO;
}

const uint8_t *criusec_ctx_manifest_digest(const struct criusec_ctx *ctx)
{
	if (!ctx || ctx->ctx.version() == kFormatVersion1 || !ctx->ctx.sealed())
		return nullptr;
	return ctx->ctx.manifest_digest().data();
}

/* ---- keys, signers, trust, policy ---- */

int criusec_key_is_url(const char *ref)
{
	return ref && is_pkcs11_url(ref) ? 1 : 0;
}

/* Not guarded(): the last error stays, to be printed beside the key it is about. */
const char *criusec_key_display(const char *ref)
{
	thread_local char shown[1024];
	try {
		std::snprintf(shown, sizeof(shown), "%s", ref ? key_ref_display(ref).c_str() : "(none)");
	} catch (...) {
		std::snprintf(shown, sizeof(shown), "%s", "(a key)");
	}
	return shown;
}

struct criusec_signer *criusec_signer_load(const char *key, const char *cert_path)
{
	criusec_signer *ret = nullptr;
	guarded([&]() -> Status {
		if (!key || !cert_path)
			return invalid_argument("NULL key or certificate path");
		auto priv = load_private_key(key);
		if (!priv.ok())
			return std::move(priv).status().with_context(key_ref_display(key));
		auto pem = read_small_file(cert_path, kMaxPemSize);
		if (!pem.ok())
			return std::move(pem).status().with_context(cert_path);
		auto now = static_cast<uint64_t>(std::time(nullptr));
		auto s = Signer::create(std::move(priv).value(), pem.value().span(), now);
		if (!s.ok())
			return std::move(s).status().with_context(cert_path);
		ret = new criusec_signer{std::move(s).value()};
		return {};
	});
	return ret;
}

void criusec_signer_free(struct criusec_signer *s)
{
	delete s;
}

const char *criusec_signer_subject(const struct criusec_signer *s)
{
	return s ? s->signer.subject().c_str() : "";
}

struct criusec_trust *criusec_trust_new(void)
{
	criusec_trust *ret = nullptr;
	guarded([&]() -> Status {
		ret = new criusec_trust{};
		return {};
	});
	return ret;
}

void criusec_trust_free(struct criusec_trust *t)
{
	delete t;
}

int criusec_trust_add_file(struct criusec_trust *t, const char *pem_path)
{
	return guarded([&]() -> Status {
		if (!t || !pem_path)
			return invalid_argument("NULL trust or path");
		auto pem = read_small_file(pem_path, kMaxPemSize);
		if (!pem.ok())
			return std::move(pem).status().with_context(pem_path);
		CRIUSEC_TRY(t->store.add_pem(pem.value().span(), pem_path));
		t->subjects = t->store.subjects();
		return {};
	});
}

size_t criusec_trust_count(const struct criusec_trust *t)
{
	return t ? t->store.size() : 0;
}

const char *criusec_trust_subject(const struct criusec_trust *t, size_t i)
{
	return t && i < t->subjects.size() ? t->subjects[i].c_str() : nullptr;
}

int criusec_header_check(const struct criusec_header *hdr, const struct criusec_policy *policy,
			 struct criusec_verdict *v)
{
	return guarded([&]() -> Status {
		if (!hdr || !policy)
			return invalid_argument("NULL header or policy");
		if (v)
			std::memset(v, 0, sizeof(*v));
		HeaderView view;
		CRIUSEC_TRY(header_view(hdr, view));
		Policy p;
		p.trust = policy->trust ? &policy->trust->store : nullptr;
		p.required = policy->required != 0;
		p.max_age = policy->max_age;
		Verdict r;
		Status st = check_header(view, p, static_cast<uint64_t>(std::time(nullptr)), r);
		if (v) {
			v->is_signed = r.is_signed;
			v->trusted = r.trusted;
			v->created = r.created;
			std::snprintf(v->signer, sizeof(v->signer), "%s", r.signer.c_str());
			std::snprintf(v->how, sizeof(v->how), "%s", r.how.c_str());
		}
		return st;
	});
}

int criusec_stream_seal_fd(struct criusec_ctx *ctx, const char *kind, const char *name, int in_fd, int out_fd,
			   struct criusec_stream_info *info)
{
	return guarded([&]() -> Status {
		CRIUSEC_TRY(check_stream_args(ctx, kind, name));
		StreamInfo si;
		CRIUSEC_TRY(seal_fd(ctx->ctx, kind, name, in_fd, out_fd, info ? &si : nullptr));
		to_c(si, info);
		return {};
	});
}

int criusec_stream_open_fd(struct criusec_ctx *ctx, const char *kind, const char *name, int in_fd, int out_fd,
			   const struct criusec_stream_info *expect)
{
	return guarded([&]() -> Status {
		CRIUSEC_TRY(check_stream_args(ctx, kind, name));
		StreamInfo e = from_c(expect);
		return open_fd(ctx->ctx, kind, name, in_fd, out_fd, expect ? &e : nullptr);
	});
}

static_assert(CRIUSEC_GRANT_MAX == kGrantMaxLen);

int criusec_stream_grant(struct criusec_ctx *ctx, const char *kind, const char *name, uint8_t *out,
			 size_t *out_len)
{
	return guarded([&]() -> Status {
		CRIUSEC_TRY(check_stream_args(ctx, kind, name));
		if (!out || !out_len)
			return invalid_argument("criusec_stream_grant: NULL output");
		auto g = StreamSealer::grant(ctx->ctx, kind, name);
		if (!g.ok())
			return std::move(g).status();
		std::memcpy(out, g.value().data(), g.value().size());
		*out_len = g.value().size();
		return {};
	});
}

int criusec_stream_seal_granted_fd(const uint8_t *grant, size_t grant_len, const char *kind, const char *name,
				   int in_fd, int out_fd)
{
	return guarded([&]() -> Status {
		if (!grant || !kind || !name)
			return invalid_argument("criusec_stream_seal_granted_fd: NULL argument");
		if (grant_len > kGrantMaxLen)
			return bad_data("not a stream grant (too long)");
		return seal_fd_granted(std::span(grant, grant_len), kind, name, in_fd, out_fd);
	});
}

int criusec_stream_seal_buf(struct criusec_ctx *ctx, const char *kind, const char *name, const void *in,
			    size_t in_len, uint8_t **out, size_t *out_len, struct criusec_stream_info *info)
{
	return guarded([&]() -> Status {
		CRIUSEC_TRY(check_buf_args(in, in_len, out, out_len));
		CRIUSEC_TRY(check_stream_args(ctx, kind, name));
		if (sealed_size(in_len, ctx->ctx.chunk_size()) == 0)
			return Status::error(EOVERFLOW, "input too large");
		std::vector<uint8_t> v; /* ciphertext only */
		StreamInfo si;
		CRIUSEC_TRY(seal_vector(ctx->ctx, kind, name, in_span(in, in_len), v, info ? &si : nullptr));
		MallocBuffer buf(v.size(), false);
		std::memcpy(buf.span().data(), v.data(), v.size());
		to_c(si, info);
		*out_len = v.size();
		*out = buf.release();
		return {};
	});
}

int criusec_stream_open_buf(struct criusec_ctx *ctx, const char *kind, const char *name, const void *in,
			    size_t in_len, uint8_t **out, size_t *out_len, const struct criusec_stream_info *expect)
{
	return guarded([&]() -> Status {
		CRIUSEC_TRY(check_buf_args(in, in_len, out, out_len));
		CRIUSEC_TRY(check_stream_args(ctx, kind, name));
		/*
		 * The plaintext of an uncompressed stream is shorter than the
		 * stream; a compressed one's grows (each step wiped).
		 */
		auto buf = std::make_unique<MallocBuffer>(in_len, true);
		size_t len = 0;
		Emit append = [&](std::span<const uint8_t> b) -> Status {
			if (b.size() > buf->span().size() - len) {
				size_t want = std::max(buf->span().size() * 2, len + b.size());
				auto bigger = std::make_unique<MallocBuffer>(want, true);
				std::memcpy(bigger->span().data(), buf->span().data(), len);
				buf = std::move(bigger);
			}
			std::memcpy(buf->span().data() + len, b.data(), b.size());
			len += b.size();
			return {};
		};
		StreamInfo e = from_c(expect);
		CRIUSEC_TRY(open_stream(ctx->ctx, kind, name, in_span(in, in_len), append, expect ? &e : nullptr));
		*out_len = len;
		*out = buf->release();
		return {};
	});
}

int criusec_name_matches(const char *pattern, const char *name)
{
	return pattern && name && name_matches(pattern, name) ? 1 : 0;
}

int criusec_manifest_check(const struct criusec_manifest_entry *m, size_t n, bool v2,
			   const struct criusec_image_kind *kinds, size_t n_kinds)
{
	return guarded([&]() -> Status {
		if ((n && !m) || (n_kinds && !kinds))
			return invalid_argument("criusec_manifest_check: NULL table");
		std::vector<ImageKind> k;
		for (size_t i = 0; i < n_kinds; i++) {
			if (!kinds[i].kind || !kinds[i].pattern)
				return invalid_argument("criusec_manifest_check: a kind without a name or pattern");
			k.push_back({ kinds[i].kind, kinds[i].pattern, kinds[i].pagemap });
		}
		std::vector<ManifestEntry> e;
		for (size_t i = 0; i < n; i++) {
			const criusec_manifest_entry &c = m[i];
			if (!c.kind || !c.name || (c.digest_len && !c.digest) || (c.entries_len && !c.entries))
				return invalid_argument("criusec_manifest_check: an entry without a kind or name");
			e.push_back({ c.kind, c.name, c.size, { c.digest, c.digest_len }, { c.entries, c.entries_len } });
		}
		return check_manifest(e, v2, k);
	});
}

struct criusec_pagemap_digest *criusec_pagemap_digest_new(uint64_t pages_id)
{
	criusec_pagemap_digest *ret = nullptr;
	guarded([&]() -> Status {
		ret = new criusec_pagemap_digest(pages_id);
		return {};
	});
	return ret;
}

int criusec_pagemap_digest_add(struct criusec_pagemap_digest *d, uint64_t vaddr, uint32_t nr_pages, uint32_t flags)
{
	return guarded([&]() -> Status {
		if (!d)
			return invalid_argument("NULL pagemap digest");
		return d->d.add(vaddr, nr_pages, flags);
	});
}

int criusec_pagemap_digest_final(struct criusec_pagemap_digest *d, uint8_t out[CRIUSEC_DIGEST_LEN])
{
	int ret = guarded([&]() -> Status {
		if (!d)
			return invalid_argument("NULL pagemap digest");
		if (!out)
			return {};
		Digest dg;
		CRIUSEC_TRY(d->d.finish(dg));
		std::memcpy(out, dg.data(), dg.size());
		return {};
	});
	delete d;
	return ret;
}

int criusec_is_stream(const void *head, size_t len)
{
	return head && is_stream({static_cast<const uint8_t *>(head), len}) ? 1 : 0;
}

struct criusec_pages *criusec_pages_new(struct criusec_ctx *ctx, const char *image_name)
{
	criusec_pages *ret = nullptr;
	guarded([&]() -> Status {
		if (!ctx || !image_name)
			return invalid_argument("NULL context or image name");
		auto c = PagePool::create(ctx->ctx, image_name);
		if (!c.ok())
			return std::move(c).status();
		ret = new criusec_pages(std::move(c).value());
		return {};
	});
	return ret;
}

void criusec_pages_free(struct criusec_pages *p)
{
	delete p;
}

int criusec_pages_seal(struct criusec_pages *p, uint64_t vaddr, uint64_t index, void *pages, size_t len,
		       uint8_t *tags)
{
	return guarded([&]() -> Status {
		if (!p || (!pages && len) || (!tags && len))
			return invalid_argument("NULL page cipher, pages or tags");
		return p->cipher.seal(vaddr, index, {static_cast<uint8_t *>(pages), len},
				      {tags, len / kPageSize * kPageTagLen});
	});
}

int criusec_pages_seal_pipe(struct criusec_pages *p, int in, uint64_t vaddr, uint64_t index, size_t len, uint8_t *tags,
			    criusec_pages_sink sink, void *sink_arg)
{
	return guarded([&]() -> Status {
		if (!p || (!tags && len) || !sink)
			return invalid_argument("NULL page cipher, tags or sink");
		auto out = [&](std::span<const uint8_t> data) { return to_sink(sink, sink_arg, data); };
		return p->cipher.seal_pipe(in, out, vaddr, index, len, {tags, len / kPageSize * kPageTagLen});
	});
}

int criusec_pages_append_pipe(struct criusec_pages *p, int in, uint64_t vaddr, size_t len, criusec_pages_sink sink,
			      void *sink_arg)
{
	return guarded([&]() -> Status {
		if (!p || !sink)
			return invalid_argument("NULL page image or sink");
		/* By value: a pool that writes behind calls it after this returns. */
		auto out = [sink, sink_arg](std::span<const uint8_t> data) { return to_sink(sink, sink_arg, data); };
		return p->cipher.append_pipe(in, out, vaddr, len, {reinterpret_cast<uintptr_t>(sink), sink_arg});
	});
}

void criusec_pages_keep_page_size(struct criusec_pages *p)
{
	if (p)
		p->cipher.keep_page_size();
}

size_t criusec_page_workers(void)
{
	return page_workers();
}

void criusec_pages_warm(void)
{
	Stage::warm();
}

void criusec_pages_write_behind(struct criusec_pages *p)
{
	if (p)
		p->cipher.write_behind();
}

int criusec_pages_index(struct criusec_pages *p, const uint8_t **index, size_t *len)
{
	return guarded([&]() -> Status {
		if (!p || !index || !len)
			return invalid_argument("NULL argument");
		CRIUSEC_TRY(p->cipher.flush());
		*index = p->cipher.index().data();
		*len = p->cipher.index().size();
		return {};
	});
}

int criusec_pages_attach(struct criusec_pages *p, const uint8_t *index, size_t len, uint64_t file_size)
{
	return guarded([&]() -> Status {
		if (!p || (!index && len))
			return invalid_argument("NULL page image or index");
		return p->cipher.attach({index, len}, file_size);
	});
}

int criusec_pages_read(struct criusec_pages *p, int fd, uint64_t vaddr, uint64_t index, void *pages, size_t len)
{
	return guarded([&]() -> Status {
		if (!p || (!pages && len))
			return invalid_argument("NULL page image or pages");
		return p->cipher.read(fd, vaddr, index, {static_cast<uint8_t *>(pages), len});
	});
}

int criusec_pages_punch(struct criusec_pages *p, uint64_t index, uint64_t nr_pages, criusec_pages_hole hole,
			void *hole_arg)
{
	return guarded([&]() -> Status {
		if (!p || !hole)
			return invalid_argument("NULL page image or hole");
		return p->cipher.punch(index, nr_pages, [&](uint64_t off, uint64_t len) -> Status {
			if (hole(hole_arg, off, len))
				return Status::error(errno ? errno : EIO, "can't punch a hole in the page image");
			return {};
		});
	});
}

int criusec_pages_index_pages(const struct criusec_ctx *ctx, const uint8_t *index, size_t len, uint64_t *pages)
{
	return guarded([&]() -> Status {
		if (!ctx || (!index && len) || !pages)
			return invalid_argument("NULL context, index or count");
		auto e = PagePool::index_extent(ctx->ctx, {index, len});
		if (!e.ok())
			return std::move(e).status();
		*pages = e.value().pages;
		return {};
	});
}

int criusec_pages_check_size(const struct criusec_ctx *ctx, const uint8_t *index, size_t len, uint64_t file_size)
{
	return guarded([&]() -> Status {
		if (!ctx || (!index && len))
			return invalid_argument("NULL context or index");
		return PagePool::check_file(ctx->ctx, {index, len}, file_size);
	});
}

int criusec_keyring_store(struct criusec_ctx *ctx, unsigned int ttl_seconds, char *desc, size_t desc_len)
{
	int unrestricted = 0;
	if (desc && desc_len)
		desc[0] = '\0';
	int rc = guarded([&]() -> Status {
		if (!ctx || !desc || desc_len < CRIUSEC_KEYRING_DESC_LEN)
			return invalid_argument("NULL context or short description buffer");
		auto secret = ctx->ctx.chain_secret();
		if (secret.size() != CRIUSEC_CHAIN_SECRET_LEN)
			return invalid_argument("the context has no chain secret");
		std::string name = keyring_desc(ctx->ctx.id());
		std::snprintf(desc, desc_len, "%s", name.c_str());
		Status restricted;
		CRIUSEC_TRY(keyring_store(name, secret, ttl_seconds, restricted));
		if (!restricted.ok())
			unrestricted = 1;
		return restricted;
	});
	return unrestricted ? CRIUSEC_KEYRING_UNRESTRICTED : rc;
}

struct criusec_ctx *criusec_keyring_import(const struct criusec_header *h, bool *found, char *desc, size_t desc_len)
{
	criusec_ctx *ret = nullptr;
	if (found)
		*found = false;
	if (desc && desc_len)
		desc[0] = '\0';
	guarded([&]() -> Status {
		if (!h || !found || !desc || desc_len < CRIUSEC_KEYRING_DESC_LEN)
			return invalid_argument("NULL header or short description buffer");
		std::string name = keyring_desc(std::span<const uint8_t, kIdLen>(h->ckpt_id, kIdLen));
		std::snprintf(desc, desc_len, "%s", name.c_str());
		auto secret = keyring_read(name, CRIUSEC_CHAIN_SECRET_LEN);
		if (!secret.ok())
			return std::move(secret).status();
		*found = true;
		HeaderView v;
		CRIUSEC_TRY(header_view(h, v));
		auto c = Ctx::import_secret(v, secret.value().span());
		if (!c.ok())
			return std::move(c).status();
		ret = new criusec_ctx(std::move(c).value());
		return {};
	});
	return ret;
}

void *criusec_secret_map(int fd, size_t len)
{
	void *p = secret_map(fd, len);
	if (!p) {
		int e = errno;
		set_last_error(errno_string(e).c_str());
		g_last_errno = -e;
		errno = e; /* the caller's perror */
	} else {
		g_last_error[0] = '\0';
		g_last_errno = 0;
	}
	return p;
}

void criusec_secret_unmap(void *p, size_t len)
{
	secret_unmap(p, len);
}

} /* extern "C" */
#pragma GCC visibility pop
