/*
 * The extern "C" layer (criusec.h).  Every entry point is noexcept: errors,
 * including std::bad_alloc, become a negative errno (or NULL) plus a
 * message in criusec_last_error().  Nothing here logs or prints.
 */
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <memory>
#include <new>
#include <string_view>

#include "capi_internal.h"
#include "criusec.h"
#include "ctx.h"
#include "io.h"
#include "pages.h"
#include "selftest.h"
#include "stream.h"

using namespace criusec;

namespace {

/* Certificates and keys are a few KiB; anything near this is not one. */
constexpr size_t kMaxPemSize = 1 << 20;

thread_local char g_last_error[512];

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
			return 0;
		set_last_error(s.message().c_str());
		return -s.err();
	} catch (const std::bad_alloc &) {
		set_last_error("out of memory");
		return -ENOMEM;
	} catch (const std::exception &e) {
		set_last_error(e.what());
		return -EIO;
	} catch (...) {
		set_last_error("internal error");
		return -EIO;
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

} /* namespace */

struct criusec_pages {
	explicit criusec_pages(PagePool c) : cipher(std::move(c)) {}
	PagePool cipher;
};

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
	return "criusec 1.0.0 (format 1)";
}

const char *criusec_last_error(void)
{
	return g_last_error;
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

struct criusec_ctx *criusec_ctx_new(enum criusec_aead aead, const uint8_t *parent_id)
{
	criusec_ctx *ret = nullptr;
	guarded([&]() -> Status {
		uint32_t v = enum_value(aead);
		std::optional<AeadAlg> alg = v == CRIUSEC_AEAD_AUTO ? default_aead() : aead_from_wire(v);
		if (!alg)
			return invalid_argument("unknown AEAD " + std::to_string(v));
		std::optional<Id> parent;
		if (parent_id) {
			parent.emplace();
			std::memcpy(parent->data(), parent_id, kIdLen);
		}
		auto c = Ctx::create(*alg, parent);
		if (!c.ok())
			return std::move(c).status();
		ret = new criusec_ctx(std::move(c).value());
		return {};
	});
	return ret;
}

int criusec_ctx_add_recipient(struct criusec_ctx *ctx, const char *cert_pem_path)
{
	return guarded([&]() -> Status {
		if (!ctx || !cert_pem_path)
			return invalid_argument("NULL context or certificate path");
		auto pem = read_small_file(cert_pem_path, kMaxPemSize);
		if (!pem.ok())
			return std::move(pem).status();
		return ctx->ctx.add_recipient(pem.value().span()).with_context(cert_pem_path);
	});
}

int criusec_ctx_export(struct criusec_ctx *ctx, struct criusec_header *hdr)
{
	return guarded([&]() -> Status {
		if (!ctx || !hdr)
			return invalid_argument("NULL context or header");
		const Ctx &c = ctx->ctx;
		auto mac = c.header_mac();
		if (!mac.ok())
			return std::move(mac).status();

		/*
		 * Views into the context's stanzas.  Earlier exports stay valid
		 * until the context is freed, as criusec.h promises: stanzas are
		 * only ever appended, so an array of the same length is reused.
		 */
		const auto &rs = c.recipients();
		std::vector<criusec_recipient> views(rs.size());
		for (size_t i = 0; i < rs.size(); i++) {
			std::memcpy(views[i].fingerprint, rs[i].fpr.data(), kFprLen);
			views[i].wrap_alg = rs[i].wrap_alg;
			views[i].wrapped = rs[i].wrapped.data();
			views[i].wrapped_len = rs[i].wrapped.size();
		}
		if (ctx->exported.empty() || ctx->exported.back().size() != views.size())
			ctx->exported.push_back(std::move(views));

		std::memset(hdr, 0, sizeof(*hdr));
		hdr->version = kFormatVersion;
		std::memcpy(hdr->ckpt_id, c.id().data(), kIdLen);
		hdr->has_parent = c.parent().has_value();
		if (c.parent())
			std::memcpy(hdr->parent_id, c.parent()->data(), kIdLen);
		hdr->aead = static_cast<uint32_t>(c.aead());
		hdr->chunk_size = c.chunk_size();
		hdr->n_recipients = ctx->exported.back().size();
		hdr->recipients = ctx->exported.back().data();
		std::memcpy(hdr->mac, mac.value().data(), kMacLen);
		return {};
	});
}

struct criusec_ctx *criusec_ctx_import(const struct criusec_header *hdr, const char *key_pem_path)
{
	criusec_ctx *ret = nullptr;
	guarded([&]() -> Status {
		if (!hdr || !key_pem_path)
			return invalid_argument("NULL header or key path");
		/* Memory safety first: never walk an implausible recipient array. */
		if (hdr->n_recipients > kMaxRecipients)
			return bad_data("cipher.img header has too many recipients");
		if (hdr->n_recipients && !hdr->recipients)
			return invalid_argument("NULL recipient array");
		if (hdr->has_parent != 0 && hdr->has_parent != 1)
			return bad_data("cipher.img header: has_parent must be 0 or 1");

		HeaderView v;
		v.version = hdr->version;
		std::memcpy(v.ckpt_id.data(), hdr->ckpt_id, kIdLen);
		if (hdr->has_parent) {
			v.parent.emplace();
			std::memcpy(v.parent->data(), hdr->parent_id, kIdLen);
		}
		v.aead = hdr->aead;
		v.chunk_size = hdr->chunk_size;
		std::memcpy(v.mac.data(), hdr->mac, kMacLen);
		v.recipients.reserve(hdr->n_recipients);
		for (size_t i = 0; i < hdr->n_recipients; i++) {
			const criusec_recipient &r = hdr->recipients[i];
			if (r.wrapped_len && !r.wrapped)
				return invalid_argument("NULL wrapped key");
			v.recipients.push_back({std::span<const uint8_t, kFprLen>(r.fingerprint, kFprLen), r.wrap_alg,
						std::span<const uint8_t>(r.wrapped, r.wrapped ? r.wrapped_len : 0)});
		}

		auto pem = read_small_file(key_pem_path, kMaxPemSize);
		if (!pem.ok())
			return std::move(pem).status();
		auto c = Ctx::import(v, pem.value().span());
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

enum criusec_aead criusec_ctx_aead(const struct criusec_ctx *ctx)
{
	return ctx ? static_cast<enum criusec_aead>(ctx->ctx.aead()) : CRIUSEC_AEAD_AUTO;
}

int criusec_stream_seal_fd(struct criusec_ctx *ctx, const char *kind, const char *name, int in_fd, int out_fd)
{
	return guarded([&]() -> Status {
		CRIUSEC_TRY(check_stream_args(ctx, kind, name));
		return seal_fd(ctx->ctx, kind, name, in_fd, out_fd);
	});
}

int criusec_stream_open_fd(struct criusec_ctx *ctx, const char *kind, const char *name, int in_fd, int out_fd)
{
	return guarded([&]() -> Status {
		CRIUSEC_TRY(check_stream_args(ctx, kind, name));
		return open_fd(ctx->ctx, kind, name, in_fd, out_fd);
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
			    size_t in_len, uint8_t **out, size_t *out_len)
{
	return guarded([&]() -> Status {
		CRIUSEC_TRY(check_buf_args(in, in_len, out, out_len));
		CRIUSEC_TRY(check_stream_args(ctx, kind, name));
		size_t n = sealed_size(in_len, ctx->ctx.chunk_size());
		if (n == 0)
			return Status::error(EOVERFLOW, "input too large");
		MallocBuffer buf(n, false);
		CRIUSEC_TRY(seal_buffer(ctx->ctx, kind, name, in_span(in, in_len), buf.span()));
		*out_len = n;
		*out = buf.release();
		return {};
	});
}

int criusec_stream_open_buf(struct criusec_ctx *ctx, const char *kind, const char *name, const void *in,
			    size_t in_len, uint8_t **out, size_t *out_len)
{
	return guarded([&]() -> Status {
		CRIUSEC_TRY(check_buf_args(in, in_len, out, out_len));
		CRIUSEC_TRY(check_stream_args(ctx, kind, name));
		/* The plaintext is shorter than the stream; wiped if we fail half-way. */
		MallocBuffer buf(in_len, true);
		auto n = open_buffer(ctx->ctx, kind, name, in_span(in, in_len), buf.span());
		if (!n.ok())
			return std::move(n).status();
		*out_len = n.value();
		*out = buf.release();
		return {};
	});
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

int criusec_pages_open(struct criusec_pages *p, uint64_t vaddr, uint64_t index, void *pages, size_t len,
		       const uint8_t *tags)
{
	return guarded([&]() -> Status {
		if (!p || (!pages && len) || (!tags && len))
			return invalid_argument("NULL page cipher, pages or tags");
		return p->cipher.open(vaddr, index, {static_cast<uint8_t *>(pages), len},
				      {tags, len / kPageSize * kPageTagLen});
	});
}

int criusec_pages_pread(struct criusec_pages *p, int fd, uint64_t vaddr, uint64_t index, void *pages, size_t len,
			const uint8_t *tags)
{
	return guarded([&]() -> Status {
		if (!p || (!pages && len) || (!tags && len))
			return invalid_argument("NULL page cipher, pages or tags");
		return p->cipher.pread(fd, vaddr, index, {static_cast<uint8_t *>(pages), len},
				       {tags, len / kPageSize * kPageTagLen});
	});
}

int criusec_pages_seal_pipe(struct criusec_pages *p, int in, uint64_t vaddr, uint64_t index, size_t len, uint8_t *tags,
			    criusec_pages_sink sink, void *sink_arg)
{
	return guarded([&]() -> Status {
		if (!p || (!tags && len) || !sink)
			return invalid_argument("NULL page cipher, tags or sink");
		auto out = [&](std::span<const uint8_t> data) -> Status {
			if (sink(sink_arg, data.data(), data.size()) == 0)
				return {};
			int e = errno;
			return Status::error(e, "can't write pages: " + errno_string(e));
		};
		return p->cipher.seal_pipe(in, out, vaddr, index, len, {tags, len / kPageSize * kPageTagLen});
	});
}

} /* extern "C" */
#pragma GCC visibility pop
