/*
 * Compression before encryption (Documentation/criusec-format.md, 11):
 * LZ4 (block format) or zstd (one frame per block), always on bounded
 * blocks, so that what a reader decompresses never exceeds a size it
 * knows beforehand.  Used for page regions (page_cipher.cpp) and for the
 * content of image streams (a block stream, below).
 *
 * Compression state holds plaintext: the zstd contexts allocate through a
 * wiping allocator, LZ4 works in a state this object owns (SecureBytes).
 */
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string_view>

#include "criusec.h"
#include "secure_bytes.h"
#include "status.h"

namespace criusec {

/* Values are the format's (criusec.h enum criusec_compress). */
enum class CompressAlg : uint8_t {
	None = CRIUSEC_COMPRESS_NONE,
	Lz4 = CRIUSEC_COMPRESS_LZ4,
	Zstd = CRIUSEC_COMPRESS_ZSTD,
};

std::optional<CompressAlg> compress_from_wire(uint32_t v) noexcept;
const char *compress_name(CompressAlg alg) noexcept;

/* Largest plaintext of one compressed block (a page region, a stream block). */
constexpr size_t kMaxCompressBlock = 1u << 20;

class BlockCodec {
public:
	/* alg != None */
	[[nodiscard]] static Result<BlockCodec> create(CompressAlg alg);
	BlockCodec(BlockCodec &&) noexcept;
	BlockCodec &operator=(BlockCodec &&) noexcept;
	~BlockCodec();

	CompressAlg alg() const noexcept { return alg_; }

	/*
	 * Compress in into out; the length, or 0 when it does not fit in out
	 * (the caller then stores the block as it is).  A cheap LZ4 probe of
	 * a few samples first skips input that will not compress (random
	 * bytes, compressed or encrypted data) at a fraction of the cost.
	 */
	[[nodiscard]] Result<size_t> compress(std::span<const uint8_t> in, std::span<uint8_t> out);
	/*
	 * Decompress in into out; fails unless it gives exactly out.size()
	 * bytes (exact = true) or at most out.size() (exact = false: the
	 * length is returned).  Never writes outside out, whatever in is.
	 */
	[[nodiscard]] Result<size_t> decompress(std::span<const uint8_t> in, std::span<uint8_t> out, bool exact);

private:
	struct Impl;
	explicit BlockCodec(Impl *impl) noexcept;
	CompressAlg alg_ = CompressAlg::None;
	Impl *impl_ = nullptr;
};

/*
 * The content of a compressed stream (stream header byte 11 != 0): the
 * plaintext cut into blocks of kStreamBlock bytes (the last one 1..that;
 * the empty plaintext has no block), each stored as
 *   u32(h) || payload,  h = flag (bit 31: 1 stored as is, 0 compressed) | length
 * where a stored block's payload is its plaintext and a compressed one's
 * decompresses to it.  Every block but the last decodes to exactly
 * kStreamBlock bytes.
 */
constexpr size_t kStreamBlock = 256 * 1024;
constexpr uint32_t kStoredFlag = 0x80000000u;

using Emit = std::function<Status(std::span<const uint8_t>)>;

class BlockEncoder {
public:
	[[nodiscard]] static Result<BlockEncoder> create(CompressAlg alg);
	/* Plaintext in; encoded bytes out through emit, in order. */
	[[nodiscard]] Status write(std::span<const uint8_t> pt, const Emit &emit);
	[[nodiscard]] Status finish(const Emit &emit);

private:
	BlockEncoder(BlockCodec c, SecureBytes buf, SecureBytes out) noexcept
		: codec_(std::move(c)), buf_(std::move(buf)), out_(std::move(out))
	{
	}
	[[nodiscard]] Status flush(const Emit &emit);
	BlockCodec codec_;
	SecureBytes buf_; /* plaintext of the block being filled */
	SecureBytes out_; /* header + payload of an encoded block */
	size_t fill_ = 0;
};

class BlockDecoder {
public:
	[[nodiscard]] static Result<BlockDecoder> create(CompressAlg alg);
	/* Encoded bytes in (any split); plaintext out through emit. */
	[[nodiscard]] Status write(std::span<const uint8_t> in, const Emit &emit);
	/* The input is complete: fails on a block cut short. */
	[[nodiscard]] Status finish() const;

private:
	BlockDecoder(BlockCodec c, SecureBytes in, SecureBytes out) noexcept
		: codec_(std::move(c)), in_(std::move(in)), out_(std::move(out))
	{
	}
	BlockCodec codec_;
	SecureBytes in_;  /* header + payload of the block being read */
	SecureBytes out_; /* its plaintext */
	size_t have_ = 0; /* bytes of in_ filled */
	size_t need_ = 4; /* bytes in_ needs for the current step */
	bool short_seen_ = false;
	uint64_t blocks_ = 0;
};

} /* namespace criusec */
