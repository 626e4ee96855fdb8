#include "stream.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <string>

#include <sys/stat.h>

#include "bytes.h"
#include "io.h"

namespace criusec {

namespace {

constexpr uint64_t kMaxCounter = std::numeric_limits<uint64_t>::max();

Status check_label(const char *what, std::string_view s)
{
	if (s.empty())
		return invalid_argument(std::string("stream ") + what + " is empty");
	if (s.size() > kMaxLabelLen)
		return invalid_argument(std::string("stream ") + what + " is too long");
	/* The NUL separators in the KDF info and AAD must stay unambiguous. */
	if (s.find('\0') != std::string_view::npos)
		return invalid_argument(std::string("stream ") + what + " contains a NUL byte");
	return {};
}

unsigned log2_exact(uint32_t v) noexcept
{
	unsigned l = 0;
	while ((1u << l) < v)
		++l;
	return l;
}

/*
 * Key and AAD of one stream.  The key is bound to the checkpoint (PRK),
 * kind, name and salt; the AAD binds every chunk to the header bytes, the
 * checkpoint id, kind and name, so a chunk cannot be moved to another
 * stream and the header cannot be edited.
 */
struct StreamCrypto {
	Aead aead;
	std::vector<uint8_t> aad;
};

/* The AEAD and AAD of a stream whose key is known (derived here, or granted). */
Result<StreamCrypto> stream_crypto_keyed(AeadAlg alg, std::span<const uint8_t> key, const Id &id,
					 std::string_view kind, std::string_view name,
					 std::span<const uint8_t, kStreamHeaderLen> hdr)
{
	auto aead = Aead::create(alg, key);
	if (!aead.ok())
		return std::move(aead).status();

	std::vector<uint8_t> aad;
	aad.reserve(kStreamHeaderLen + kIdLen + kind.size() + 1 + name.size());
	put_bytes(aad, hdr);
	put_bytes(aad, id);
	put_str(aad, kind);
	put_u8(aad, 0);
	put_str(aad, name);
	return StreamCrypto{std::move(aead).value(), std::move(aad)};
}

Result<SecureBytes> stream_key(const Ctx &ctx, std::string_view kind, std::string_view name,
			       std::span<const uint8_t, kStreamHeaderLen> hdr)
{
	CRIUSEC_TRY(check_label("kind", kind));
	CRIUSEC_TRY(check_label("name", name));

	std::vector<uint8_t> info;
	info.reserve(kInfoStream.size() + kind.size() + name.size() + 3 + kStreamSaltLen);
	put_str(info, kInfoStream);
	put_u8(info, 0);
	put_str(info, kind);
	put_u8(info, 0);
	put_str(info, name);
	put_u8(info, 0);
	put_bytes(info, hdr.subspan(kStreamHeaderLen - kStreamSaltLen));
	return ctx.derive(info, kAeadKeyLen);
}

Result<StreamCrypto> stream_crypto(const Ctx &ctx, std::string_view kind, std::string_view name,
				   std::span<const uint8_t, kStreamHeaderLen> hdr)
{
	auto key = stream_key(ctx, kind, name, hdr);
	if (!key.ok())
		return std::move(key).status();
	return stream_crypto_keyed(ctx.aead(), key.value().span(), ctx.id(), kind, name, hdr);
}

StreamHeader new_header(AeadAlg aead, uint32_t chunk_size, CompressAlg compress)
{
	StreamHeader hdr{};
	std::memcpy(hdr.data(), CRIUSEC_STREAM_MAGIC, kStreamMagicLen);
	hdr[8] = kStreamVersion;
	hdr[9] = static_cast<uint8_t>(aead);
	hdr[10] = static_cast<uint8_t>(log2_exact(chunk_size));
	hdr[11] = static_cast<uint8_t>(compress);
	return hdr;
}

/* 11-byte big-endian chunk counter, then the last-chunk flag. */
std::array<uint8_t, kAeadNonceLen> make_nonce(uint64_t counter, bool last) noexcept
{
	std::array<uint8_t, kAeadNonceLen> n{};
	for (size_t i = 0; i < 8; i++)
		n[10 - i] = static_cast<uint8_t>(counter >> (8 * i));
	n[11] = last ? 1 : 0;
	return n;
}

std::string chunk_str(uint64_t counter)
{
	return "chunk " + std::to_string(counter);
}

} /* namespace */

bool is_stream(std::span<const uint8_t> head) noexcept
{
	return head.size() >= kStreamMagicLen && std::memcmp(head.data(), CRIUSEC_STREAM_MAGIC, kStreamMagicLen) == 0;
}

size_t sealed_size(size_t pt_len, uint32_t chunk_size) noexcept
{
	size_t chunks = pt_len / chunk_size + (pt_len % chunk_size != 0);
	if (chunks == 0)
		chunks = 1; /* the empty plaintext is one empty final chunk */
	size_t overhead = kStreamHeaderLen + chunks * kAeadTagLen; /* chunks <= pt_len: no overflow here */
	if (pt_len > std::numeric_limits<size_t>::max() - overhead)
		return 0;
	return pt_len + overhead;
}

/* ---- sealing ---- */

Result<StreamSealer> StreamSealer::start(const Ctx &ctx, std::string_view kind, std::string_view name)
{
	StreamHeader hdr = new_header(ctx.aead(), ctx.chunk_size(), ctx.compress());
	/* A fresh salt gives every stream its own key, even for a rewritten image. */
	CRIUSEC_TRY(random_bytes(std::span(hdr).subspan(kStreamHeaderLen - kStreamSaltLen)));

	auto sc = stream_crypto(ctx, kind, name, hdr);
	if (!sc.ok())
		return std::move(sc).status();
	return StreamSealer(std::move(sc.value().aead), std::move(sc.value().aad), hdr, ctx.chunk_size());
}

/*
 * Grant layout: magic, the stream header (AEAD, chunk size, salt), the
 * checkpoint id, the stream key, then kind and name (2-byte big-endian
 * length each).  Everything the sealer needs, nothing that opens any other
 * stream.
 */
Result<SecureBytes> StreamSealer::grant(const Ctx &ctx, std::string_view kind, std::string_view name)
{
	StreamHeader hdr = new_header(ctx.aead(), ctx.chunk_size(), ctx.compress());
	CRIUSEC_TRY(random_bytes(std::span(hdr).subspan(kStreamHeaderLen - kStreamSaltLen)));
	auto key = stream_key(ctx, kind, name, hdr);
	if (!key.ok())
		return std::move(key).status();

	SecureBytes g(kGrantFixedLen + 2 + kind.size() + 2 + name.size());
	uint8_t *p = g.data();
	auto put = [&p](const void *src, size_t n) {
		std::memcpy(p, src, n);
		p += n;
	};
	auto put_len = [&p](size_t n) {
		*p++ = static_cast<uint8_t>(n >> 8);
		*p++ = static_cast<uint8_t>(n);
	};
	put(kGrantMagic.data(), kGrantMagic.size());
	put(hdr.data(), hdr.size());
	put(ctx.id().data(), kIdLen);
	put(key.value().data(), kAeadKeyLen);
	put_len(kind.size());
	put(kind.data(), kind.size());
	put_len(name.size());
	put(name.data(), name.size());
	return g;
}

Result<StreamSealer> StreamSealer::from_grant(std::span<const uint8_t> g, std::string_view kind,
					      std::string_view name)
{
	CRIUSEC_TRY(check_label("kind", kind));
	CRIUSEC_TRY(check_label("name", name));
	if (g.size() < kGrantFixedLen + 4 || std::memcmp(g.data(), kGrantMagic.data(), kGrantMagic.size()) != 0)
		return bad_data("not a stream grant");
	size_t pos = kGrantMagic.size();
	StreamHeader hdr;
	std::memcpy(hdr.data(), g.data() + pos, kStreamHeaderLen);
	pos += kStreamHeaderLen;
	Id id;
	std::memcpy(id.data(), g.data() + pos, kIdLen);
	pos += kIdLen;
	auto key = g.subspan(pos, kAeadKeyLen);
	pos += kAeadKeyLen;

	/* The grant names the one stream it may seal: it must be this one. */
	auto label = [&g, &pos](std::string_view want) {
		if (g.size() - pos < 2)
			return false;
		size_t n = size_t(g[pos]) << 8 | g[pos + 1];
		pos += 2;
		if (g.size() - pos < n || n != want.size() || std::memcmp(g.data() + pos, want.data(), n) != 0)
			return false;
		pos += n;
		return true;
	};
	if (!label(kind) || !label(name) || pos != g.size())
		return bad_data("the grant is not for " + std::string(kind) + " " + std::string(name));

	if (std::memcmp(hdr.data(), CRIUSEC_STREAM_MAGIC, kStreamMagicLen) != 0 || hdr[8] != kStreamVersion ||
	    !compress_from_wire(hdr[11]))
		return bad_data("bad stream header in the grant");
	auto aead = aead_from_wire(hdr[9]);
	if (!aead)
		return unsupported("unknown stream AEAD " + std::to_string(hdr[9]) + " in the grant");
	if (hdr[10] < 12 || hdr[10] > 20)
		return bad_data("invalid stream chunk size exponent in the grant");

	auto sc = stream_crypto_keyed(*aead, key, id, kind, name, hdr);
	if (!sc.ok())
		return std::move(sc).status();
	return StreamSealer(std::move(sc.value().aead), std::move(sc.value().aad), hdr, size_t(1) << hdr[10]);
}

Status StreamSealer::seal_chunk(std::span<const uint8_t> pt, bool last, std::span<uint8_t> out)
{
	if (done_)
		return invalid_argument("stream already has its final chunk");
	if (counter_ == kMaxCounter)
		return Status::error(EOVERFLOW, "chunk counter overflow");
	if (pt.size() > chunk_size_ || (!last && pt.size() != chunk_size_))
		return invalid_argument("only the final chunk may be shorter than the chunk size");
	if (last && pt.empty() && counter_ != 0)
		return invalid_argument("the final chunk may only be empty when it is the only one");
	if (out.size() != pt.size() + kAeadTagLen)
		return invalid_argument("seal_chunk: output size mismatch");
	auto nonce = make_nonce(counter_, last);
	CRIUSEC_TRY(aead_.seal(nonce, aad_, pt, out));
	++counter_;
	done_ = last;
	return {};
}

/* ---- opening ---- */

Result<StreamOpener> StreamOpener::start(const Ctx &ctx, std::string_view kind, std::string_view name,
					 std::span<const uint8_t> head)
{
	if (head.empty())
		return bad_data("stream truncated (empty input)");
	size_t n = std::min(head.size(), kStreamMagicLen);
	if (std::memcmp(head.data(), CRIUSEC_STREAM_MAGIC, n) != 0)
		return bad_data("not an encrypted image (bad magic)");
	if (head.size() < kStreamHeaderLen)
		return bad_data("stream truncated (incomplete stream header)");

	if (head[8] != kStreamVersion)
		return unsupported("unsupported stream version " + std::to_string(head[8]));
	auto aead = aead_from_wire(head[9]);
	if (!aead)
		return unsupported("unknown stream AEAD " + std::to_string(head[9]));
	if (*aead != ctx.aead())
		return bad_data(std::string("stream AEAD ") + aead_name(*aead) + " differs from the checkpoint's " +
				aead_name(ctx.aead()));
	if (head[10] < 12 || head[10] > 20)
		return bad_data("invalid stream chunk size exponent " + std::to_string(head[10]));
	uint32_t chunk = 1u << head[10];
	if (chunk != ctx.chunk_size())
		return bad_data("stream chunk size " + std::to_string(chunk) + " differs from the checkpoint's " +
				std::to_string(ctx.chunk_size()));
	/* Compressed with the checkpoint's algorithm, or not at all. */
	if (head[11] != 0 && head[11] != static_cast<uint8_t>(ctx.compress()))
		return bad_data("bad stream header (compression " + std::to_string(head[11]) +
				(ctx.compress() == CompressAlg::None ? " in a checkpoint without compression)"
								     : " differs from the checkpoint's)"));

	auto sc = stream_crypto(ctx, kind, name, head.first<kStreamHeaderLen>());
	if (!sc.ok())
		return std::move(sc).status();
	StreamOpener o(std::move(sc.value().aead), std::move(sc.value().aad), chunk);
	o.compress_ = static_cast<CompressAlg>(head[11]);
	return o;
}

Status StreamOpener::try_open(std::span<const uint8_t> ct, bool last, std::span<uint8_t> out)
{
	auto nonce = make_nonce(counter_, last);
	return aead_.open(nonce, aad_, ct, out.first(ct.size() - kAeadTagLen));
}

Result<size_t> StreamOpener::open_chunk(std::span<const uint8_t> ct, bool more, std::span<uint8_t> out)
{
	const size_t sealed = sealed_chunk_size();
	if (done_)
		return bad_data("trailing data after final chunk");
	if (ct.size() > sealed || (more && ct.size() != sealed))
		return invalid_argument("open_chunk: bad chunk length");
	if (ct.size() >= kAeadTagLen && out.size() < ct.size() - kAeadTagLen)
		return invalid_argument("open_chunk: output buffer too small");
	if (counter_ == kMaxCounter)
		return bad_data("chunk counter overflow");

	if (more) {
		if (try_open(ct, false, out).ok()) {
			++counter_;
			return ct.size() - kAeadTagLen;
		}
		/* A final chunk followed by more bytes: say so rather than "failed". */
		if (try_open(ct, true, out).ok()) {
			gnutls_memset(out.data(), 0, ct.size() - kAeadTagLen);
			return bad_data("trailing data after final chunk");
		}
		return bad_data(chunk_str(counter_) + " failed authentication" +
				(counter_ == 0 ? " (tampered, or not sealed for this checkpoint, kind and name)" : ""));
	}

	if (ct.empty())
		return bad_data("stream truncated (no final chunk)");
	/* Only a lone final chunk may be empty (16 bytes, the tag). */
	if (ct.size() < kAeadTagLen + (counter_ > 0 ? 1 : 0))
		return bad_data("stream truncated (partial " + chunk_str(counter_) + ")");
	if (try_open(ct, true, out).ok()) {
		done_ = true;
		return ct.size() - kAeadTagLen;
	}
	/* A full non-final chunk at EOF: the stream was cut at a chunk boundary. */
	if (ct.size() == sealed && try_open(ct, false, out).ok()) {
		gnutls_memset(out.data(), 0, ct.size() - kAeadTagLen);
		return bad_data("stream truncated (no final chunk)");
	}
	return bad_data(chunk_str(counter_) + " failed authentication" +
			(counter_ == 0 ? " (tampered, truncated, or not sealed for this checkpoint, kind and name)"
				       : " (final chunk: tampered, truncated or extended)"));
}

/* ---- what the manifest records ---- */

namespace {

Status check_size(const StreamInfo *expect, uint64_t size)
{
	if (expect && expect->has_size && expect->size != size)
		return bad_data("the file is " + std::to_string(size) + " bytes, the manifest recorded " +
				std::to_string(expect->size) + " (truncated, extended or replaced)");
	return {};
}

Status check_digest(const StreamInfo *expect, Sha256 &hash)
{
	Digest d;
	CRIUSEC_TRY(hash.finish(d));
	if (expect && !ct_equal(d, expect->digest))
		return bad_data("the plaintext is not what the manifest recorded (digest mismatch)");
	return {};
}

Status report(StreamInfo *info, uint64_t size, Sha256 &hash)
{
	if (!info)
		return {};
	info->size = size;
	info->has_size = true;
	return hash.finish(info->digest);
}

} /* namespace */

/* ---- content in, sealed stream out ---- */

namespace {

/*
 * Cuts the stream's content into chunks and seals them.  A full chunk is
 * sealed only once more content follows, so the final chunk is known
 * without knowing the length beforehand.
 */
class ChunkWriter {
public:
	ChunkWriter(StreamSealer &s, const Emit &out) : s_(s), out_(out), cur_(s.chunk_size()), sealed_(s.chunk_size() + kAeadTagLen) {}

	Status start() { return out_(s_.header()); }
	Status write(std::span<const uint8_t> b)
	{
		while (!b.empty()) {
			if (fill_ == cur_.size())
				CRIUSEC_TRY(seal(false));
			size_t n = std::min(b.size(), cur_.size() - fill_);
			std::memcpy(cur_.data() + fill_, b.data(), n);
			fill_ += n;
			b = b.subspan(n);
		}
		return {};
	}
	Status finish() { return seal(true); }

private:
	Status seal(bool last)
	{
		auto out = std::span(sealed_).first(fill_ + kAeadTagLen);
		CRIUSEC_TRY(s_.seal_chunk(cur_.span().first(fill_), last, out));
		fill_ = 0;
		return out_(out);
	}
	StreamSealer &s_;
	const Emit &out_;
	SecureBytes cur_;
	std::vector<uint8_t> sealed_;
	size_t fill_ = 0;
};

/*
 * Seal the plaintext that next() gives (an empty span at its end) into
 * out, through the block encoder when the stream is compressed.
 */
template <typename Next> Status seal_with(StreamSealer &s, Next &&next, const Emit &out, StreamInfo *info)
{
	uint64_t written = 0;
	Emit counted = [&](std::span<const uint8_t> b) {
		written += b.size();
		return out(b);
	};
	ChunkWriter w(s, counted);
	CRIUSEC_TRY(w.start());
	Sha256 hash;
	std::optional<BlockEncoder> enc;
	if (s.compress() != CompressAlg::None) {
		auto e = BlockEncoder::create(s.compress());
		if (!e.ok())
			return std::move(e).status();
		enc.emplace(std::move(e).value());
	}
	Emit to_chunks = [&w](std::span<const uint8_t> b) { return w.write(b); };
	for (;;) {
		auto pt = next();
		if (!pt.ok())
			return std::move(pt).status();
		auto b = pt.value();
		if (b.empty())
			break;
		if (info)
			CRIUSEC_TRY(hash.update(b));
		CRIUSEC_TRY(enc ? enc->write(b, to_chunks) : w.write(b));
	}
	if (enc)
		CRIUSEC_TRY(enc->finish(to_chunks));
	CRIUSEC_TRY(w.finish());
	return report(info, written, hash);
}

/* Plaintext of opened chunks to emit, decoding a compressed stream's blocks. */
class ContentReader {
public:
	ContentReader(const Emit &emit, const StreamInfo *expect) : emit_(emit), expect_(expect) {}
	Status start(CompressAlg alg)
	{
		if (alg == CompressAlg::None)
			return {};
		auto d = BlockDecoder::create(alg);
		if (!d.ok())
			return std::move(d).status();
		dec_.emplace(std::move(d).value());
		return {};
	}
	Status write(std::span<const uint8_t> content)
	{
		if (!dec_)
			return plain(content);
		Emit e = [this](std::span<const uint8_t> b) { return plain(b); };
		return dec_->write(content, e);
	}
	Status finish()
	{
		if (dec_)
			CRIUSEC_TRY(dec_->finish());
		if (!expect_)
			return {};
		return check_digest(expect_, hash_);
	}

private:
	Status plain(std::span<const uint8_t> b)
	{
		if (expect_)
			CRIUSEC_TRY(hash_.update(b));
		return emit_(b);
	}
	const Emit &emit_;
	const StreamInfo *expect_;
	std::optional<BlockDecoder> dec_;
	Sha256 hash_;
};

} /* namespace */

/* ---- whole buffers ---- */

Status seal_buffer(const Ctx &ctx, std::string_view kind, std::string_view name, std::span<const uint8_t> in,
		   std::span<uint8_t> out, StreamInfo *info)
{
	if (ctx.compress() != CompressAlg::None)
		return invalid_argument("seal_buffer: a compressed stream's size is not known beforehand");
	size_t need = sealed_size(in.size(), ctx.chunk_size());
	if (need == 0 || out.size() != need)
		return invalid_argument("seal_buffer: output size mismatch");
	std::vector<uint8_t> v;
	v.reserve(need);
	CRIUSEC_TRY(seal_vector(ctx, kind, name, in, v, info));
	if (v.size() != need)
		return Status::error(EIO, "seal_buffer: internal size mismatch");
	std::memcpy(out.data(), v.data(), need);
	return {};
}

Status seal_vector(const Ctx &ctx, std::string_view kind, std::string_view name, std::span<const uint8_t> in,
		   std::vector<uint8_t> &out, StreamInfo *info)
{
	auto sealer = StreamSealer::start(ctx, kind, name);
	if (!sealer.ok())
		return std::move(sealer).status();
	bool given = false;
	auto next = [&]() -> Result<std::span<const uint8_t>> {
		if (given)
			return std::span<const uint8_t>();
		given = true;
		return in;
	};
	Emit append = [&out](std::span<const uint8_t> b) -> Status {
		put_bytes(out, b);
		return {};
	};
	return seal_with(sealer.value(), next, append, info);
}

Status open_stream(const Ctx &ctx, std::string_view kind, std::string_view name, std::span<const uint8_t> in,
		   const Emit &emit, const StreamInfo *expect)
{
	CRIUSEC_TRY(check_size(expect, in.size()));
	auto opener = StreamOpener::start(ctx, kind, name, in.first(std::min(in.size(), kStreamHeaderLen)));
	if (!opener.ok())
		return std::move(opener).status();
	auto &o = opener.value();
	ContentReader content(emit, expect);
	CRIUSEC_TRY(content.start(o.compress()));
	SecureBytes plain(o.chunk_size());

	size_t ipos = kStreamHeaderLen;
	for (;;) {
		size_t remaining = in.size() - ipos;
		bool more = remaining > o.sealed_chunk_size();
		auto ct = in.subspan(ipos, more ? o.sealed_chunk_size() : remaining);
		auto n = o.open_chunk(ct, more, plain.span());
		if (!n.ok())
			return std::move(n).status();
		CRIUSEC_TRY(content.write(plain.span().first(n.value())));
		ipos += ct.size();
		if (!more)
			return content.finish();
	}
}

Result<size_t> open_buffer(const Ctx &ctx, std::string_view kind, std::string_view name, std::span<const uint8_t> in,
			   std::span<uint8_t> out, const StreamInfo *expect)
{
	if (out.size() < in.size())
		return invalid_argument("open_buffer: output buffer too small");
	size_t opos = 0;
	Emit into = [&](std::span<const uint8_t> b) -> Status {
		if (b.size() > out.size() - opos)
			return bad_data("the plaintext is larger than the buffer for it");
		std::memcpy(out.data() + opos, b.data(), b.size());
		opos += b.size();
		return {};
	};
	Status s = open_stream(ctx, kind, name, in, into, expect);
	if (!s.ok()) {
		gnutls_memset(out.data(), 0, opos);
		return s;
	}
	return opos;
}

/* ---- file descriptors ---- */

namespace {

Status seal_fd_with(StreamSealer &s, int in_fd, int out_fd, StreamInfo *info)
{
	SecureBytes buf(s.chunk_size());
	auto next = [&]() -> Result<std::span<const uint8_t>> {
		auto r = read_full(in_fd, buf.span());
		if (!r.ok())
			return std::move(r).status();
		return std::span<const uint8_t>(buf.span().first(r.value()));
	};
	Emit to_fd = [out_fd](std::span<const uint8_t> b) { return write_full(out_fd, b); };
	return seal_with(s, next, to_fd, info);
}

} /* namespace */

Status seal_fd(const Ctx &ctx, std::string_view kind, std::string_view name, int in_fd, int out_fd,
	       StreamInfo *info)
{
	auto sealer = StreamSealer::start(ctx, kind, name);
	if (!sealer.ok())
		return std::move(sealer).status();
	return seal_fd_with(sealer.value(), in_fd, out_fd, info);
}

Status seal_fd_granted(std::span<const uint8_t> grant, std::string_view kind, std::string_view name, int in_fd,
		       int out_fd)
{
	auto sealer = StreamSealer::from_grant(grant, kind, name);
	if (!sealer.ok())
		return std::move(sealer).status();
	return seal_fd_with(sealer.value(), in_fd, out_fd, nullptr);
}

Status open_fd(const Ctx &ctx, std::string_view kind, std::string_view name, int in_fd, int out_fd,
	       const StreamInfo *expect)
{
	/* A file of another size than recorded is refused unread. */
	struct stat st;
	if (expect && expect->has_size && fstat(in_fd, &st) == 0 && S_ISREG(st.st_mode))
		CRIUSEC_TRY(check_size(expect, static_cast<uint64_t>(st.st_size)));

	StreamHeader hdr;
	auto rh = read_full(in_fd, hdr);
	if (!rh.ok())
		return std::move(rh).status();
	auto opener = StreamOpener::start(ctx, kind, name, std::span(hdr).first(rh.value()));
	if (!opener.ok())
		return std::move(opener).status();
	auto &o = opener.value();
	Emit to_fd = [out_fd](std::span<const uint8_t> b) { return write_full(out_fd, b); };
	ContentReader content(to_fd, expect);
	CRIUSEC_TRY(content.start(o.compress()));

	/* Two sealed chunks: the one being opened and the look-ahead that tells whether more follows. */
	const size_t sealed = o.sealed_chunk_size();
	std::vector<uint8_t> cur(sealed), next(sealed);
	SecureBytes plain(o.chunk_size());

	auto r = read_full(in_fd, cur);
	if (!r.ok())
		return std::move(r).status();
	size_t ncur = r.value();
	uint64_t consumed = rh.value();
	for (;;) {
		size_t nnext = 0;
		bool more = false;
		if (ncur == sealed) {
			auto rn = read_full(in_fd, next);
			if (!rn.ok())
				return std::move(rn).status();
			nnext = rn.value();
			more = nnext > 0;
		}
		auto n = o.open_chunk(std::span(cur).first(ncur), more, plain.span());
		if (!n.ok())
			return std::move(n).status();
		/* Only authenticated plaintext reaches out_fd. */
		CRIUSEC_TRY(content.write(plain.span().first(n.value())));
		consumed += ncur;
		if (!more) {
			CRIUSEC_TRY(check_size(expect, consumed));
			return content.finish();
		}
		cur.swap(next);
		ncur = nnext;
	}
}

} /* namespace criusec */
