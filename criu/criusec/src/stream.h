/*
 * The stream layer: one image = one AEAD stream (the STREAM construction,
 * as in age).  See Documentation/criusec-format.md for the byte layout.
 */
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

#include "aead.h"
#include "compress.h"
#include "ctx.h"
#include "status.h"

namespace criusec {

constexpr size_t kStreamMagicLen = CRIUSEC_STREAM_MAGIC_LEN;
constexpr size_t kStreamSaltLen = 16;
constexpr size_t kStreamHeaderLen = kStreamMagicLen + 4 + kStreamSaltLen; /* 28 */
constexpr uint8_t kStreamVersion = 1;
/* Bound on kind and name, which are hashed into every chunk's AAD. */
constexpr size_t kMaxLabelLen = 4096;

using StreamHeader = std::array<uint8_t, kStreamHeaderLen>;

/* A grant: the right to seal one stream of a checkpoint, handed to another process. */
inline constexpr std::string_view kGrantMagic = "CRIUSECG";
constexpr size_t kGrantFixedLen = 8 + kStreamHeaderLen + kIdLen + kAeadKeyLen; /* 84 */
constexpr size_t kGrantMaxLen = kGrantFixedLen + 2 * (2 + kMaxLabelLen);

bool is_stream(std::span<const uint8_t> head) noexcept;

/*
 * What a format-2 manifest records of a stream image: the file's size and
 * the SHA-256 of its plaintext.  Sealing fills it in; opening checks an
 * expected one (the size before anything is read, when has_size).
 */
struct StreamInfo {
	uint64_t size = 0;
	bool has_size = false;
	Digest digest{};
};

/* Stream size for a plaintext length, or 0 on size_t overflow. */
size_t sealed_size(size_t pt_len, uint32_t chunk_size) noexcept;

/* Seals one stream chunk by chunk. */
class StreamSealer {
public:
	[[nodiscard]] static Result<StreamSealer> start(const Ctx &ctx, std::string_view kind, std::string_view name);
	/*
	 * For a process without the master key (criu page-server): grant()
	 * makes a fresh stream header and its key for (kind, name) alone;
	 * from_grant() seals that one stream, exactly as start() would have.
	 */
	[[nodiscard]] static Result<SecureBytes> grant(const Ctx &ctx, std::string_view kind, std::string_view name);
	[[nodiscard]] static Result<StreamSealer> from_grant(std::span<const uint8_t> grant, std::string_view kind,
							     std::string_view name);

	const StreamHeader &header() const noexcept { return header_; }
	size_t chunk_size() const noexcept { return chunk_size_; }
	/* The content is a block stream (compress.h) when this is not None. */
	CompressAlg compress() const noexcept { return static_cast<CompressAlg>(header_[11]); }

	/*
	 * pt is a whole chunk (chunk_size bytes) unless last; the last chunk has
	 * 1..chunk_size bytes, or 0 only if it is also the first.
	 * out.size() == pt.size() + kAeadTagLen.
	 */
	[[nodiscard]] Status seal_chunk(std::span<const uint8_t> pt, bool last, std::span<uint8_t> out);

	/* Tests only: jump to chunk number n (2^64 chunks cannot be written to reach it). */
	void skip_to_chunk_for_testing(uint64_t n) noexcept { counter_ = n; }

private:
	StreamSealer(Aead aead, std::vector<uint8_t> aad, const StreamHeader &hdr, size_t chunk) noexcept
		: aead_(std::move(aead)), aad_(std::move(aad)), header_(hdr), chunk_size_(chunk)
	{
	}
	Aead aead_;
	std::vector<uint8_t> aad_;
	StreamHeader header_;
	size_t chunk_size_;
	uint64_t counter_ = 0;
	bool done_ = false;
};

/* Opens one stream chunk by chunk; never returns unauthenticated plaintext. */
class StreamOpener {
public:
	/* head is whatever the input starts with (short input is reported as such). */
	[[nodiscard]] static Result<StreamOpener> start(const Ctx &ctx, std::string_view kind, std::string_view name,
							std::span<const uint8_t> head);

	size_t chunk_size() const noexcept { return chunk_size_; }
	size_t sealed_chunk_size() const noexcept { return chunk_size_ + kAeadTagLen; }
	bool finished() const noexcept { return done_; }
	/* The content is a block stream (compress.h) when this is not None. */
	CompressAlg compress() const noexcept { return compress_; }

	/*
	 * ct: the next sealed chunk.  more == true: ct is exactly
	 * sealed_chunk_size() bytes and more input follows.  more == false: ct is
	 * all that is left of the input (0..sealed_chunk_size() bytes).
	 * out needs ct.size() - 16 bytes (chunk_size() is always enough).
	 * Returns the plaintext length.
	 */
	[[nodiscard]] Result<size_t> open_chunk(std::span<const uint8_t> ct, bool more, std::span<uint8_t> out);

	/* Tests only, as StreamSealer's. */
	void skip_to_chunk_for_testing(uint64_t n) noexcept { counter_ = n; }

private:
	StreamOpener(Aead aead, std::vector<uint8_t> aad, size_t chunk) noexcept
		: aead_(std::move(aead)), aad_(std::move(aad)), chunk_size_(chunk)
	{
	}
	[[nodiscard]] Status try_open(std::span<const uint8_t> ct, bool last, std::span<uint8_t> out);
	Aead aead_;
	std::vector<uint8_t> aad_;
	size_t chunk_size_;
	uint64_t counter_ = 0;
	bool done_ = false;
	CompressAlg compress_ = CompressAlg::None;
};

/*
 * Whole-buffer forms.  out must be sealed_size(in.size()) bytes: the
 * checkpoint must not compress (seal_vector() can).  info/expect may be null.
 */
[[nodiscard]] Status seal_buffer(const Ctx &ctx, std::string_view kind, std::string_view name,
				 std::span<const uint8_t> in, std::span<uint8_t> out, StreamInfo *info = nullptr);
/*
 * out must be at least in.size() bytes (an upper bound for an
 * uncompressed stream; a compressed one fails if it does not fit); returns
 * the plaintext length.
 */
[[nodiscard]] Result<size_t> open_buffer(const Ctx &ctx, std::string_view kind, std::string_view name,
					 std::span<const uint8_t> in, std::span<uint8_t> out,
					 const StreamInfo *expect = nullptr);

/* Any checkpoint, compressed or not: the stream is appended to out. */
[[nodiscard]] Status seal_vector(const Ctx &ctx, std::string_view kind, std::string_view name,
				 std::span<const uint8_t> in, std::vector<uint8_t> &out, StreamInfo *info = nullptr);
/* Open in; the plaintext goes to emit, in order, one authenticated chunk's worth at a time. */
[[nodiscard]] Status open_stream(const Ctx &ctx, std::string_view kind, std::string_view name,
				 std::span<const uint8_t> in, const Emit &emit, const StreamInfo *expect = nullptr);

/* fd forms, with a bounded buffer of two chunks. */
[[nodiscard]] Status seal_fd(const Ctx &ctx, std::string_view kind, std::string_view name, int in_fd, int out_fd,
			     StreamInfo *info = nullptr);
/* seal_fd() under a grant (StreamSealer::from_grant()). */
[[nodiscard]] Status seal_fd_granted(std::span<const uint8_t> grant, std::string_view kind, std::string_view name,
				     int in_fd, int out_fd);
[[nodiscard]] Status open_fd(const Ctx &ctx, std::string_view kind, std::string_view name, int in_fd, int out_fd,
			     const StreamInfo *expect = nullptr);

} /* namespace criusec */
