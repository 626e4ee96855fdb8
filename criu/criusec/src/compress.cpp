#include "compress.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <new>
#include <string>
#include <utility>

#include <gnutls/gnutls.h>
#include <lz4.h>
#define ZSTD_STATIC_LINKING_ONLY /* ZSTD_createCCtx_advanced: our allocator */
#include <zstd.h>
#include <zstd_errors.h>

namespace criusec {

std::optional<CompressAlg> compress_from_wire(uint32_t v) noexcept
{
	switch (v) {
	case CRIUSEC_COMPRESS_NONE:
		return CompressAlg::None;
	case CRIUSEC_COMPRESS_LZ4:
		return CompressAlg::Lz4;
	case CRIUSEC_COMPRESS_ZSTD:
		return CompressAlg::Zstd;
	}
	return std::nullopt;
}

const char *compress_name(CompressAlg alg) noexcept
{
	switch (alg) {
	case CompressAlg::None:
		return "none";
	case CompressAlg::Lz4:
		return "lz4";
	case CompressAlg::Zstd:
		return "zstd";
	}
	return "unknown";
}

namespace {

/* zstd's level for pages and streams: the bench's choice (make bench). */
constexpr int kZstdLevel = 1;
/* The probe: samples this long, and what they must save to be worth a full try. */
constexpr size_t kProbeLen = 4096;
constexpr size_t kProbeMinInput = 4 * kProbeLen;
constexpr size_t kProbeMinSaving = kProbeLen / 16;
/*
 * LZ4 gives up on bytes without matches faster with a higher acceleration
 * (random 4 KiB: 750 ns at 1, 360 ns at 16 here), while text, zeros and
 * records still show their saving.
 */
constexpr int kProbeAcceleration = 16;

/* zstd's buffers hold plaintext: wipe them before they go back to the heap. */
void *wiping_alloc(void *, size_t size)
{
	auto *p = static_cast<uint8_t *>(std::malloc(size + 16));
	if (!p)
		return nullptr;
	std::memcpy(p, &size, sizeof(size));
	return p + 16;
}

void wiping_free(void *, void *addr)
{
	if (!addr)
		return;
	auto *p = static_cast<uint8_t *>(addr) - 16;
	size_t size;
	std::memcpy(&size, p, sizeof(size));
	gnutls_memset(addr, 0, size);
	std::free(p);
}

constexpr ZSTD_customMem kWipingMem = {wiping_alloc, wiping_free, nullptr};

} /* namespace */

struct BlockCodec::Impl {
	SecureBytes lz4_state;
	ZSTD_CCtx *cctx = nullptr;
	ZSTD_DCtx *dctx = nullptr;
	~Impl()
	{
		ZSTD_freeCCtx(cctx);
		ZSTD_freeDCtx(dctx);
	}
	/* LZ4 into out; 0 when it does not fit. */
	size_t lz4(std::span<const uint8_t> in, std::span<uint8_t> out, int acceleration = 1)
	{
		int n = LZ4_compress_fast_extState(lz4_state.data(), reinterpret_cast<const char *>(in.data()),
						   reinterpret_cast<char *>(out.data()), static_cast<int>(in.size()),
						   static_cast<int>(out.size()), acceleration);
		return n > 0 ? static_cast<size_t>(n) : 0;
	}
};

BlockCodec::BlockCodec(Impl *impl) noexcept : impl_(impl) {}
BlockCodec::BlockCodec(BlockCodec &&o) noexcept : alg_(o.alg_), impl_(std::exchange(o.impl_, nullptr)) {}
BlockCodec &BlockCodec::operator=(BlockCodec &&o) noexcept
{
	if (this != &o) {
		delete impl_;
		alg_ = o.alg_;
		impl_ = std::exchange(o.impl_, nullptr);
	}
	return *this;
}
BlockCodec::~BlockCodec()
{
	delete impl_;
}

Result<BlockCodec> BlockCodec::create(CompressAlg alg)
{
	if (alg == CompressAlg::None)
		return invalid_argument("no compression algorithm");
	auto impl = new Impl;
	BlockCodec c(impl);
	c.alg_ = alg;
	/* Every codec can probe with LZ4, whatever it compresses with. */
	impl->lz4_state = SecureBytes(static_cast<size_t>(LZ4_sizeofState()));
	if (alg == CompressAlg::Zstd) {
		impl->cctx = ZSTD_createCCtx_advanced(kWipingMem);
		impl->dctx = ZSTD_createDCtx_advanced(kWipingMem);
		if (!impl->cctx || !impl->dctx)
			return Status::error(ENOMEM, "can't make a zstd context");
	}
	return c;
}

Result<size_t> BlockCodec::compress(std::span<const uint8_t> in, std::span<uint8_t> out)
{
	if (in.empty() || in.size() > kMaxCompressBlock)
		return invalid_argument("compress: block of " + std::to_string(in.size()) + " bytes");
	if (out.empty())
		return size_t{0};
	if (in.size() >= kProbeLen) {
		/*
		 * The start and, in a larger block, the middle: a region of random
		 * or compressed bytes saves nothing in either.  A block of a page
		 * or three (a scattered dump's runs) is judged by its first page.
		 */
		uint8_t probe[kProbeLen - kProbeMinSaving];
		size_t mid = (in.size() / 2) & ~(kProbeLen - 1);
		if (!impl_->lz4(in.first(kProbeLen), probe, kProbeAcceleration) &&
		    (in.size() < kProbeMinInput || !impl_->lz4(in.subspan(mid, kProbeLen), probe, kProbeAcceleration)))
			return size_t{0};
	}
	if (alg_ == CompressAlg::Lz4)
		return impl_->lz4(in, out);
	size_t n = ZSTD_compressCCtx(impl_->cctx, out.data(), out.size(), in.data(), in.size(), kZstdLevel);
	if (ZSTD_isError(n)) {
		if (ZSTD_getErrorCode(n) == ZSTD_error_dstSize_tooSmall)
			return size_t{0};
		return Status::error(EIO, std::string("zstd: ") + ZSTD_getErrorName(n));
	}
	return n;
}

Result<size_t> BlockCodec::decompress(std::span<const uint8_t> in, std::span<uint8_t> out, bool exact)
{
	if (in.empty() || in.size() > kMaxCompressBlock || out.empty() || out.size() > kMaxCompressBlock)
		return bad_data("compressed block of " + std::to_string(in.size()) + " bytes for " +
				std::to_string(out.size()));
	size_t n;
	if (alg_ == CompressAlg::Lz4) {
		int r = LZ4_decompress_safe(reinterpret_cast<const char *>(in.data()), reinterpret_cast<char *>(out.data()),
					    static_cast<int>(in.size()), static_cast<int>(out.size()));
		if (r < 0)
			return bad_data("LZ4 block does not decompress");
		n = static_cast<size_t>(r);
	} else {
		/* Exactly one frame, all of the input (zstd would go on to decode a second). */
		size_t frame = ZSTD_findFrameCompressedSize(in.data(), in.size());
		if (ZSTD_isError(frame) || frame != in.size())
			return bad_data("compressed block is not one zstd frame");
		n = ZSTD_decompressDCtx(impl_->dctx, out.data(), out.size(), in.data(), in.size());
		if (ZSTD_isError(n))
			return bad_data(std::string("zstd block does not decompress (") + ZSTD_getErrorName(n) + ")");
	}
	if (n == 0 || (exact && n != out.size()))
		return bad_data("compressed block decompresses to " + std::to_string(n) + " bytes, not " +
				std::to_string(out.size()));
	return n;
}

/* ---- block streams ---- */

Result<BlockEncoder> BlockEncoder::create(CompressAlg alg)
{
	auto c = BlockCodec::create(alg);
	if (!c.ok())
		return std::move(c).status();
	return BlockEncoder(std::move(c).value(), SecureBytes(kStreamBlock), SecureBytes(4 + kStreamBlock));
}

Status BlockEncoder::flush(const Emit &emit)
{
	auto pt = buf_.span().first(fill_);
	auto payload = out_.span().subspan(4);
	/* Compressed only when it is shorter than the block itself. */
	auto n = codec_.compress(pt, payload.first(fill_ - 1));
	if (!n.ok())
		return std::move(n).status();
	uint32_t h;
	if (n.value()) {
		h = static_cast<uint32_t>(n.value());
	} else {
		std::memcpy(payload.data(), pt.data(), fill_);
		h = kStoredFlag | static_cast<uint32_t>(fill_);
	}
	size_t len = h & ~kStoredFlag;
	for (int i = 0; i < 4; i++)
		out_.data()[i] = static_cast<uint8_t>(h >> (24 - 8 * i));
	fill_ = 0;
	return emit(out_.span().first(4 + len));
}

Status BlockEncoder::write(std::span<const uint8_t> pt, const Emit &emit)
{
	while (!pt.empty()) {
		/* A full block is encoded only once more plaintext follows: the last one is whatever remains. */
		if (fill_ == kStreamBlock)
			CRIUSEC_TRY(flush(emit));
		size_t n = std::min(pt.size(), kStreamBlock - fill_);
		std::memcpy(buf_.data() + fill_, pt.data(), n);
		fill_ += n;
		pt = pt.subspan(n);
	}
	return {};
}

Status BlockEncoder::finish(const Emit &emit)
{
	if (fill_ == 0)
		return {};
	return flush(emit);
}

Result<BlockDecoder> BlockDecoder::create(CompressAlg alg)
{
	auto c = BlockCodec::create(alg);
	if (!c.ok())
		return std::move(c).status();
	return BlockDecoder(std::move(c).value(), SecureBytes(4 + kStreamBlock), SecureBytes(kStreamBlock));
}

Status BlockDecoder::write(std::span<const uint8_t> in, const Emit &emit)
{
	while (!in.empty()) {
		size_t n = std::min(in.size(), need_ - have_);
		std::memcpy(in_.data() + have_, in.data(), n);
		have_ += n;
		in = in.subspan(n);
		if (have_ < need_)
			break;
		if (need_ == 4) {
			/* A block header: only the last block may be short. */
			const uint8_t *p = in_.data();
			uint32_t h = uint32_t(p[0]) << 24 | uint32_t(p[1]) << 16 | uint32_t(p[2]) << 8 | p[3];
			size_t len = h & ~kStoredFlag;
			if (short_seen_)
				return bad_data("compressed stream: block " + std::to_string(blocks_) +
						" follows a short block");
			if (len == 0 || len > kStreamBlock || (!(h & kStoredFlag) && len == kStreamBlock))
				return bad_data("compressed stream: block " + std::to_string(blocks_) +
						" has a bad length");
			need_ = 4 + len;
			continue;
		}
		/* A whole block. */
		auto payload = in_.span().subspan(4, need_ - 4);
		bool stored = in_.data()[0] & 0x80;
		size_t got;
		if (stored) {
			got = payload.size();
			std::memcpy(out_.data(), payload.data(), got);
		} else {
			auto r = codec_.decompress(payload, out_.span(), false);
			if (!r.ok())
				return std::move(r).status().with_context("compressed stream: block " +
									  std::to_string(blocks_));
			got = r.value();
		}
		short_seen_ = got < kStreamBlock;
		blocks_++;
		have_ = 0;
		need_ = 4;
		CRIUSEC_TRY(emit(out_.span().first(got)));
	}
	return {};
}

Status BlockDecoder::finish() const
{
	if (have_)
		return bad_data("compressed stream truncated (block " + std::to_string(blocks_) + " cut short)");
	return {};
}

} /* namespace criusec */
