/* The stream layer through the C API: round trips and tampering. */
#include <gtest/gtest.h>

#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "criusec.h"
#include "stream.h"
#include "capi_testing.h"
#include "test_util.h"

using namespace criusec;
using namespace criusec::test;

namespace {

using CtxPtr = std::unique_ptr<criusec_ctx, decltype(&criusec_ctx_free)>;

CtxPtr own(criusec_ctx *c)
{
	return CtxPtr(c, criusec_ctx_free);
}

struct Outcome {
	int rc = 0;
	std::string error;
	std::vector<uint8_t> out;
};

std::vector<uint8_t> seal_buf(criusec_ctx *ctx, const std::vector<uint8_t> &pt, const char *kind = "core",
			      const char *name = "core-1.img")
{
	uint8_t *out = nullptr;
	size_t out_len = 0;
	int rc = criusec_stream_seal_buf(ctx, kind, name, pt.data(), pt.size(), &out, &out_len, nullptr);
	EXPECT_EQ(rc, 0) << criusec_last_error();
	std::vector<uint8_t> v(out, out + out_len);
	free(out);
	return v;
}

Outcome open_buf(criusec_ctx *ctx, const std::vector<uint8_t> &st, const char *kind = "core",
		 const char *name = "core-1.img")
{
	uint8_t *out = nullptr;
	size_t out_len = 0;
	Outcome o;
	o.rc = criusec_stream_open_buf(ctx, kind, name, st.data(), st.size(), &out, &out_len, nullptr);
	o.error = criusec_last_error();
	if (o.rc == 0)
		o.out.assign(out, out + out_len);
	else {
		EXPECT_EQ(out, nullptr);
		EXPECT_EQ(out_len, 0u);
	}
	free(out);
	return o;
}

int memfd_with(const std::vector<uint8_t> &data)
{
	int fd = memfd_create("criusec-test", MFD_CLOEXEC);
	EXPECT_GE(fd, 0);
	write_all(fd, data);
	EXPECT_EQ(lseek(fd, 0, SEEK_SET), 0);
	return fd;
}

std::vector<uint8_t> memfd_contents(int fd)
{
	EXPECT_EQ(lseek(fd, 0, SEEK_SET), 0);
	return read_fd_all(fd);
}

std::vector<uint8_t> seal_fd(criusec_ctx *ctx, const std::vector<uint8_t> &pt, const char *kind = "core",
			     const char *name = "core-1.img")
{
	int in = memfd_with(pt);
	int out = memfd_create("out", MFD_CLOEXEC);
	int rc = criusec_stream_seal_fd(ctx, kind, name, in, out, nullptr);
	EXPECT_EQ(rc, 0) << criusec_last_error();
	auto v = memfd_contents(out);
	close(in);
	close(out);
	return v;
}

Outcome open_fd(criusec_ctx *ctx, const std::vector<uint8_t> &st, const char *kind = "core",
		const char *name = "core-1.img")
{
	int in = memfd_with(st);
	int out = memfd_create("out", MFD_CLOEXEC);
	Outcome o;
	o.rc = criusec_stream_open_fd(ctx, kind, name, in, out, nullptr);
	o.error = criusec_last_error();
	o.out = memfd_contents(out);
	close(in);
	close(out);
	return o;
}

/* The fd calls without what the manifest records, for through_pipes(). */
int seal_fd_plain(criusec_ctx *ctx, const char *kind, const char *name, int in, int out)
{
	return criusec_stream_seal_fd(ctx, kind, name, in, out, nullptr);
}

int open_fd_plain(criusec_ctx *ctx, const char *kind, const char *name, int in, int out)
{
	return criusec_stream_open_fd(ctx, kind, name, in, out, nullptr);
}

/* Pipes on both sides, fed and drained by threads in pieces of odd sizes. */
std::vector<uint8_t> through_pipes(const std::vector<uint8_t> &input, int &rc, std::string &err,
				   int (*fn)(criusec_ctx *, const char *, const char *, int, int), criusec_ctx *ctx,
				   bool nonblocking_in = false)
{
	int pin[2], pout[2];
	EXPECT_EQ(pipe2(pin, O_CLOEXEC), 0);
	EXPECT_EQ(pipe2(pout, O_CLOEXEC), 0);
	if (nonblocking_in)
		fcntl(pin[0], F_SETFL, fcntl(pin[0], F_GETFL) | O_NONBLOCK);
	std::thread writer([&] {
		size_t done = 0, piece = 1;
		while (done < input.size()) {
			size_t n = std::min(piece, input.size() - done);
			ssize_t w = write(pin[1], input.data() + done, n);
			if (w < 0 && errno == EINTR)
				continue;
			if (w <= 0)
				break;
			done += static_cast<size_t>(w);
			piece = piece * 7 % 10007 + 1; /* 1, 8, 57, 400, ... short writes => short reads */
		}
		close(pin[1]);
	});
	std::vector<uint8_t> output;
	std::thread reader([&] { output = read_fd_all(pout[0]); });
	rc = fn(ctx, "pipes-data", "pipes-data.img", pin[0], pout[1]);
	err = criusec_last_error();
	close(pout[1]);
	reader.join();
	close(pin[0]); /* unblocks the writer if we stopped early */
	writer.join();
	close(pout[0]);
	return output;
}

size_t expected_sealed(size_t len, size_t chunk)
{
	size_t chunks = len == 0 ? 1 : (len + chunk - 1) / chunk;
	return 28 + len + 16 * chunks;
}

std::vector<size_t> lengths_for(size_t c)
{
	return {0, 1, c - 1, c, c + 1, 2 * c, 3 * c + 7};
}

/* ---- round trips ---- */

class StreamRoundTrip : public ::testing::TestWithParam<std::tuple<AeadAlg, uint32_t>> {
protected:
	void SetUp() override
	{
		auto [aead, chunk] = GetParam();
		/* The C API's own constructor for the default size, the internal one for others. */
		ctx_ = chunk == 65536 ? own(criusec_ctx_new(static_cast<criusec_aead>(aead)))
				      : own(make_ctx(aead, chunk));
		ASSERT_TRUE(ctx_);
		chunk_ = chunk;
	}
	CtxPtr ctx_{nullptr, criusec_ctx_free};
	size_t chunk_ = 0;
};

TEST_P(StreamRoundTrip, Buffer)
{
	for (size_t len : lengths_for(chunk_)) {
		auto pt = pattern(len, static_cast<uint32_t>(len));
		auto st = seal_buf(ctx_.get(), pt);
		EXPECT_EQ(st.size(), expected_sealed(len, chunk_)) << len;
		EXPECT_EQ(criusec_is_stream(st.data(), st.size()), 1);
		auto o = open_buf(ctx_.get(), st);
		ASSERT_EQ(o.rc, 0) << "len " << len << ": " << o.error;
		EXPECT_EQ(o.out, pt) << len;
	}
}

TEST_P(StreamRoundTrip, FdMemfd)
{
	for (size_t len : lengths_for(chunk_)) {
		auto pt = pattern(len, static_cast<uint32_t>(len) + 3);
		auto st = seal_fd(ctx_.get(), pt);
		EXPECT_EQ(st.size(), expected_sealed(len, chunk_)) << len;
		auto o = open_fd(ctx_.get(), st);
		ASSERT_EQ(o.rc, 0) << "len " << len << ": " << o.error;
		EXPECT_EQ(o.out, pt) << len;
	}
}

TEST_P(StreamRoundTrip, FdPipes)
{
	for (size_t len : lengths_for(chunk_)) {
		auto pt = pattern(len, static_cast<uint32_t>(len) + 5);
		int rc = -1;
		std::string err;
		auto st = through_pipes(pt, rc, err, seal_fd_plain, ctx_.get());
		ASSERT_EQ(rc, 0) << err;
		EXPECT_EQ(st.size(), expected_sealed(len, chunk_));
		auto back = through_pipes(st, rc, err, open_fd_plain, ctx_.get());
		ASSERT_EQ(rc, 0) << "len " << len << ": " << err;
		EXPECT_EQ(back, pt) << len;
	}
}

TEST_P(StreamRoundTrip, BufferAndFdFormatsAreInterchangeable)
{
	for (size_t len : lengths_for(chunk_)) {
		auto pt = pattern(len, 99);
		auto o1 = open_fd(ctx_.get(), seal_buf(ctx_.get(), pt));
		ASSERT_EQ(o1.rc, 0) << o1.error;
		EXPECT_EQ(o1.out, pt);
		auto o2 = open_buf(ctx_.get(), seal_fd(ctx_.get(), pt));
		ASSERT_EQ(o2.rc, 0) << o2.error;
		EXPECT_EQ(o2.out, pt);
	}
}

TEST_P(StreamRoundTrip, SealingTwiceGivesDifferentStreams)
{
	auto pt = pattern(chunk_ + 1);
	auto a = seal_buf(ctx_.get(), pt), b = seal_buf(ctx_.get(), pt);
	ASSERT_EQ(a.size(), b.size());
	EXPECT_NE(a, b); /* fresh salt, so a fresh key */
	EXPECT_FALSE(std::equal(a.begin() + 28, a.end(), b.begin() + 28));
}

TEST_P(StreamRoundTrip, SealFromCurrentOffset)
{
	auto pt = pattern(3 * chunk_ + 7);
	int in = memfd_with(pt);
	ASSERT_EQ(lseek(in, 100, SEEK_SET), 100);
	int out = memfd_create("out", MFD_CLOEXEC);
	ASSERT_EQ(criusec_stream_seal_fd(ctx_.get(), "core", "core-1.img", in, out, nullptr), 0);
	auto o = open_buf(ctx_.get(), memfd_contents(out));
	ASSERT_EQ(o.rc, 0) << o.error;
	EXPECT_EQ(o.out, std::vector<uint8_t>(pt.begin() + 100, pt.end()));
	close(in);
	close(out);
}

INSTANTIATE_TEST_SUITE_P(
	All, StreamRoundTrip,
	::testing::Combine(::testing::Values(AeadAlg::Aes256Gcm, AeadAlg::ChaCha20Poly1305),
			   ::testing::Values(65536u, 4096u)),
	[](const auto &info) {
		return std::string(std::get<0>(info.param) == AeadAlg::Aes256Gcm ? "Gcm" : "ChaCha") +
		       std::to_string(std::get<1>(info.param));
	});

/* ---- tampering (4 KiB chunks keep exhaustive loops fast) ---- */

constexpr size_t kC = 4096;
constexpr size_t kSealed = kC + 16;

class StreamTamper : public ::testing::TestWithParam<AeadAlg> {
protected:
	void SetUp() override
	{
		ctx_ = own(make_ctx(GetParam(), kC));
		pt_ = pattern(3 * kC + 7, 42);
		st_ = seal_buf(ctx_.get(), pt_);
		ASSERT_EQ(st_.size(), 28 + 4 * 16 + pt_.size());
	}
	/* Offset of chunk k in the stream. */
	static size_t chunk_off(size_t k) { return 28 + k * kSealed; }
	/* Chunk index covering stream offset i (i >= 28). */
	static size_t chunk_at(size_t i) { return (i - 28) / kSealed; }

	void expect_refused(const std::vector<uint8_t> &st, const std::string &needle, const std::string &what)
	{
		auto o = open_buf(ctx_.get(), st);
		EXPECT_LT(o.rc, 0) << what << ": accepted";
		EXPECT_NE(o.error.find(needle), std::string::npos)
			<< what << ": error \"" << o.error << "\" lacks \"" << needle << "\"";
	}

	/* The fd path refuses too, and what it wrote is an authenticated prefix of whole chunks. */
	void expect_fd_refused(const std::vector<uint8_t> &st, size_t max_good_chunks, const std::string &what)
	{
		auto o = open_fd(ctx_.get(), st);
		EXPECT_LT(o.rc, 0) << what;
		EXPECT_LE(o.out.size(), max_good_chunks * kC) << what;
		EXPECT_EQ(o.out.size() % kC, 0u) << what;
		EXPECT_TRUE(std::equal(o.out.begin(), o.out.end(), pt_.begin())) << what;
	}

	CtxPtr ctx_{nullptr, criusec_ctx_free};
	std::vector<uint8_t> pt_, st_;
};

std::string expected_flip_error(size_t i)
{
	if (i < 8)
		return "not an encrypted image (bad magic)";
	if (i == 8)
		return "unsupported stream version";
	if (i == 9)
		return "stream AEAD";
	if (i == 10)
		return "chunk size";
	if (i == 11)
		return "bad stream header (compression";
	if (i < 28)
		return "chunk 0 failed authentication"; /* salt: another key */
	return "chunk " + std::to_string((i - 28) / kSealed) + " failed authentication";
}

TEST_P(StreamTamper, OneBitFlippedAtEveryByte)
{
	for (size_t i = 0; i < st_.size(); i++) {
		auto t = st_;
		t[i] ^= static_cast<uint8_t>(1u << (i % 8));
		auto want = expected_flip_error(i);
		if (i == 9)
			want = (t[9] == 1 || t[9] == 2) ? "stream AEAD" : "unknown stream AEAD";
		expect_refused(t, want, "flip at " + std::to_string(i));
	}
}

TEST_P(StreamTamper, EveryBitOfHeaderTagsAndLastChunk)
{
	std::vector<size_t> positions;
	for (size_t i = 0; i < 28; i++)
		positions.push_back(i); /* stream header */
	for (size_t k = 0; k < 4; k++) {
		size_t tag = k < 3 ? chunk_off(k) + kC : st_.size() - 16;
		for (size_t j = 0; j < 16; j++)
			positions.push_back(tag + j); /* each chunk's tag */
	}
	for (size_t i = chunk_off(3); i < st_.size() - 16; i++)
		positions.push_back(i); /* last chunk body */
	for (size_t i = chunk_off(0); i < chunk_off(0) + 64; i++)
		positions.push_back(i); /* head of the first chunk */
	for (size_t i : positions)
		for (int bit = 0; bit < 8; bit++) {
			auto t = st_;
			t[i] ^= static_cast<uint8_t>(1u << bit);
			auto o = open_buf(ctx_.get(), t);
			EXPECT_LT(o.rc, 0) << "byte " << i << " bit " << bit;
			if (i >= 28) {
				EXPECT_NE(o.error.find(expected_flip_error(i)), std::string::npos) << o.error;
			}
		}
}

TEST_P(StreamTamper, FdPathWritesOnlyAuthenticatedChunks)
{
	for (size_t k = 0; k < 4; k++) {
		auto t = st_;
		t[chunk_off(k) + 5] ^= 0x10;
		expect_fd_refused(t, k, "flip in chunk " + std::to_string(k));
		auto o = open_fd(ctx_.get(), t);
		EXPECT_NE(o.error.find("chunk " + std::to_string(k) + " failed authentication"), std::string::npos)
			<< o.error;
	}
	for (size_t i = 0; i < st_.size(); i += 61) {
		auto t = st_;
		t[i] ^= 0x80;
		expect_fd_refused(t, i < 28 ? 0 : chunk_at(i), "flip at " + std::to_string(i));
	}
}

TEST_P(StreamTamper, TruncatedAtEveryLength)
{
	for (size_t len = 0; len < st_.size(); len++) {
		std::vector<uint8_t> t(st_.begin(), st_.begin() + len);
		std::string want;
		if (len == 0)
			want = "stream truncated (empty input)";
		else if (len < 28)
			want = "stream truncated (incomplete stream header)";
		else if ((len - 28) % kSealed == 0)
			want = "stream truncated (no final chunk)";
		else if ((len - 28) % kSealed < 16 + (chunk_at(len) > 0 ? 1u : 0u))
			want = "stream truncated (partial chunk " + std::to_string(chunk_at(len)) + ")";
		else
			want = "chunk " + std::to_string(chunk_at(len)) + " failed authentication";
		expect_refused(t, want, "truncated to " + std::to_string(len));
	}
}

TEST_P(StreamTamper, TruncatedFd)
{
	for (size_t len : {size_t(0), size_t(5), size_t(27), size_t(28), chunk_off(1), chunk_off(1) + 1,
			   chunk_off(1) + 100, chunk_off(2), chunk_off(3), chunk_off(3) + 20, st_.size() - 1}) {
		std::vector<uint8_t> t(st_.begin(), st_.begin() + len);
		expect_fd_refused(t, len < 28 ? 0 : chunk_at(len), "truncated to " + std::to_string(len));
	}
	std::vector<uint8_t> t(st_.begin(), st_.begin() + chunk_off(2));
	auto o = open_fd(ctx_.get(), t);
	EXPECT_NE(o.error.find("stream truncated (no final chunk)"), std::string::npos) << o.error;
}

TEST_P(StreamTamper, ChunkDropped)
{
	for (size_t k = 0; k < 4; k++) {
		auto t = st_;
		size_t end = k < 3 ? chunk_off(k + 1) : t.size();
		t.erase(t.begin() + chunk_off(k), t.begin() + end);
		std::string want = k == 3 ? "stream truncated (no final chunk)"
					  : "chunk " + std::to_string(k) + " failed authentication";
		expect_refused(t, want, "drop chunk " + std::to_string(k));
		expect_fd_refused(t, k, "drop chunk " + std::to_string(k));
	}
}

TEST_P(StreamTamper, ChunksSwappedOrReplayed)
{
	auto swap = [&](size_t a, size_t b) {
		auto t = st_;
		std::swap_ranges(t.begin() + chunk_off(a), t.begin() + chunk_off(a) + kSealed, t.begin() + chunk_off(b));
		return t;
	};
	expect_refused(swap(0, 1), "chunk 0 failed authentication", "swap 0,1");
	expect_refused(swap(1, 2), "chunk 1 failed authentication", "swap 1,2");
	expect_fd_refused(swap(1, 2), 1, "swap 1,2");
	auto replay = st_;
	std::copy(st_.begin() + chunk_off(0), st_.begin() + chunk_off(1), replay.begin() + chunk_off(1));
	expect_refused(replay, "chunk 1 failed authentication", "replay chunk 0 as 1");
}

TEST_P(StreamTamper, TrailingData)
{
	/* A full-size final chunk then more bytes: recognised as trailing data. */
	auto pt = pattern(2 * kC, 7);
	auto st = seal_buf(ctx_.get(), pt);
	for (size_t extra : {size_t(1), size_t(16), size_t(17), kSealed, 3 * kSealed + 5}) {
		auto t = st;
		t.resize(st.size() + extra, 0x5a);
		expect_refused(t, "trailing data after final chunk", "extra " + std::to_string(extra));
		auto o = open_fd(ctx_.get(), t);
		EXPECT_LT(o.rc, 0);
		EXPECT_NE(o.error.find("trailing data after final chunk"), std::string::npos) << o.error;
	}
	/* A copy of the stream appended to itself. */
	auto twice = st;
	twice.insert(twice.end(), st.begin(), st.end());
	expect_refused(twice, "trailing data after final chunk", "stream twice");
	/* A short final chunk merges with what follows: its tag no longer verifies. */
	auto t = st_;
	t.push_back(0);
	expect_refused(t, "chunk 3 failed authentication", "short final + 1");
	t = st_;
	t.insert(t.end(), st_.begin() + 28, st_.begin() + 28 + kSealed);
	expect_refused(t, "chunk 3 failed authentication", "short final + a chunk");
	/* The empty stream, extended. */
	auto empty = seal_buf(ctx_.get(), {});
	ASSERT_EQ(empty.size(), 44u);
	empty.push_back(1);
	expect_refused(empty, "chunk 0 failed authentication", "empty + 1");
}

TEST_P(StreamTamper, ForeignStreams)
{
	expect_refused(seal_buf(ctx_.get(), pt_, "core", "core-2.img"), "chunk 0 failed authentication", "other name");
	expect_refused(seal_buf(ctx_.get(), pt_, "mm", "core-1.img"), "chunk 0 failed authentication", "other kind");
	/* kind/name boundary is unambiguous: ("core", "-1.img") is not ("core-", "1.img") */
	auto a = seal_buf(ctx_.get(), pt_, "core-", "1.img");
	EXPECT_LT(open_buf(ctx_.get(), a, "core", "-1.img").rc, 0);

	auto other = own(make_ctx(GetParam(), kC));
	expect_refused(seal_buf(other.get(), pt_), "chunk 0 failed authentication", "other checkpoint");
	auto other_aead = own(make_ctx(
		GetParam() == AeadAlg::Aes256Gcm ? AeadAlg::ChaCha20Poly1305 : AeadAlg::Aes256Gcm, kC));
	expect_refused(seal_buf(other_aead.get(), pt_), "differs from the checkpoint's", "other AEAD");
	auto other_chunk = own(make_ctx(GetParam(), 2 * kC));
	expect_refused(seal_buf(other_chunk.get(), pt_), "chunk size 8192 differs from the checkpoint's 4096",
		       "other chunk size");

	/* Header (salt) of another stream of the same image: another key. */
	auto b = seal_buf(ctx_.get(), pt_);
	auto t = st_;
	std::copy(b.begin(), b.begin() + 28, t.begin());
	expect_refused(t, "chunk 0 failed authentication", "spliced header");
	/* Chunks of another stream of the same image name. */
	t = st_;
	std::copy(b.begin() + chunk_off(1), b.begin() + chunk_off(2), t.begin() + chunk_off(1));
	expect_refused(t, "chunk 1 failed authentication", "spliced chunk");
}

TEST_P(StreamTamper, NotAStream)
{
	std::vector<uint8_t> plain = {0x54, 0x4c, 0x00, 0x54, 0x0a, 0x01, 0x02}; /* a CRIU image starts with its magic */
	plain.resize(200, 0);
	expect_refused(plain, "not an encrypted image (bad magic)", "plain image");
	EXPECT_EQ(criusec_is_stream(plain.data(), plain.size()), 0);
	EXPECT_EQ(criusec_is_stream(st_.data(), 7), 0);
	EXPECT_EQ(criusec_is_stream(st_.data(), 8), 1);
	EXPECT_EQ(criusec_is_stream(nullptr, 8), 0);
	auto o = open_fd(ctx_.get(), plain);
	EXPECT_NE(o.error.find("bad magic"), std::string::npos);
	EXPECT_TRUE(o.out.empty());
}

INSTANTIATE_TEST_SUITE_P(All, StreamTamper, ::testing::Values(AeadAlg::Aes256Gcm, AeadAlg::ChaCha20Poly1305),
			 [](const auto &info) { return std::string(info.param == AeadAlg::Aes256Gcm ? "Gcm" : "ChaCha"); });

/* The same classes on the real configuration (C API context, 64 KiB chunks). */
TEST(StreamDefaultChunk, TamperClasses)
{
	auto ctx = own(criusec_ctx_new(CRIUSEC_AEAD_AUTO));
	ASSERT_TRUE(ctx);
	const size_t c = 65536, sealed = c + 16;
	auto pt = pattern(3 * c + 7, 3);
	auto st = seal_buf(ctx.get(), pt);
	ASSERT_EQ(open_buf(ctx.get(), st).out, pt);

	auto t = st;
	t[28 + sealed + 100] ^= 1;
	EXPECT_NE(open_buf(ctx.get(), t).error.find("chunk 1 failed authentication"), std::string::npos);
	auto opened = open_fd(ctx.get(), t);
	EXPECT_LT(opened.rc, 0);
	EXPECT_EQ(opened.out, std::vector<uint8_t>(pt.begin(), pt.begin() + c));

	t.assign(st.begin(), st.begin() + 28 + 2 * sealed);
	EXPECT_NE(open_buf(ctx.get(), t).error.find("stream truncated (no final chunk)"), std::string::npos);
	t = st;
	t.push_back(0);
	EXPECT_LT(open_buf(ctx.get(), t).rc, 0);
	auto full = seal_buf(ctx.get(), pattern(c, 1));
	full.push_back(0);
	EXPECT_NE(open_buf(ctx.get(), full).error.find("trailing data after final chunk"), std::string::npos);
	auto other = own(criusec_ctx_new(CRIUSEC_AEAD_AUTO));
	EXPECT_NE(open_buf(other.get(), st).error.find("chunk 0 failed authentication"), std::string::npos);
	EXPECT_NE(open_buf(ctx.get(), st, "core", "core-2.img").error.find("chunk 0 failed authentication"),
		  std::string::npos);
}

TEST(StreamArgs, RejectsBadLabelsAndPointers)
{
	auto ctx = own(criusec_ctx_new(CRIUSEC_AEAD_AES_256_GCM));
	uint8_t *out = reinterpret_cast<uint8_t *>(1);
	size_t len = 1;
	uint8_t in[4] = {};
	EXPECT_EQ(criusec_stream_seal_buf(ctx.get(), "", "x", in, 4, &out, &len, nullptr), -EINVAL);
	EXPECT_EQ(out, nullptr);
	EXPECT_EQ(len, 0u);
	EXPECT_EQ(criusec_stream_seal_buf(ctx.get(), "core", "", in, 4, &out, &len, nullptr), -EINVAL);
	EXPECT_EQ(criusec_stream_seal_buf(ctx.get(), nullptr, "x", in, 4, &out, &len, nullptr), -EINVAL);
	EXPECT_EQ(criusec_stream_seal_buf(nullptr, "core", "x", in, 4, &out, &len, nullptr), -EINVAL);
	EXPECT_EQ(criusec_stream_seal_buf(ctx.get(), "core", "x", nullptr, 4, &out, &len, nullptr), -EINVAL);
	EXPECT_EQ(criusec_stream_seal_buf(ctx.get(), "core", "x", in, 4, nullptr, &len, nullptr), -EINVAL);
	std::string longname(5000, 'a');
	EXPECT_EQ(criusec_stream_seal_buf(ctx.get(), "core", longname.c_str(), in, 4, &out, &len, nullptr), -EINVAL);
	/* NULL input with zero length is an empty image */
	ASSERT_EQ(criusec_stream_seal_buf(ctx.get(), "core", "x", nullptr, 0, &out, &len, nullptr), 0);
	EXPECT_EQ(len, 44u);
	free(out);
	EXPECT_EQ(criusec_stream_seal_fd(ctx.get(), "core", "x", -1, -1, nullptr), -EBADF);
	EXPECT_NE(std::string(criusec_last_error()).find("Bad file descriptor"), std::string::npos);
	EXPECT_EQ(criusec_stream_open_fd(ctx.get(), "core", "x", -1, -1, nullptr), -EBADF);
}

/* ---- interrupted and non-blocking I/O ---- */

void on_signal(int) {}

TEST(StreamIo, SurvivesEintrAndShortReads)
{
	struct sigaction sa {};
	sa.sa_handler = on_signal; /* no SA_RESTART: read()/write() return EINTR */
	sigemptyset(&sa.sa_mask);
	struct sigaction old {};
	ASSERT_EQ(sigaction(SIGUSR1, &sa, &old), 0);

	auto ctx = own(make_ctx(AeadAlg::Aes256Gcm, 4096));
	auto pt = pattern(20 * 4096 + 123, 9);
	std::atomic<bool> stop{false};
	pthread_t self = pthread_self();
	std::thread pest([&] {
		while (!stop) {
			pthread_kill(self, SIGUSR1);
			std::this_thread::sleep_for(std::chrono::microseconds(50));
		}
	});
	int rc = -1;
	std::string err;
	auto st = through_pipes(pt, rc, err, seal_fd_plain, ctx.get());
	EXPECT_EQ(rc, 0) << err;
	auto back = through_pipes(st, rc, err, open_fd_plain, ctx.get());
	EXPECT_EQ(rc, 0) << err;
	stop = true;
	pest.join();
	sigaction(SIGUSR1, &old, nullptr);
	EXPECT_EQ(back, pt);
}

TEST(StreamIo, NonBlockingInput)
{
	auto ctx = own(make_ctx(AeadAlg::ChaCha20Poly1305, 4096));
	auto pt = pattern(10 * 4096 + 1, 10);
	int rc = -1;
	std::string err;
	auto st = through_pipes(pt, rc, err, seal_fd_plain, ctx.get(), true);
	ASSERT_EQ(rc, 0) << err;
	auto back = through_pipes(st, rc, err, open_fd_plain, ctx.get(), true);
	ASSERT_EQ(rc, 0) << err;
	EXPECT_EQ(back, pt);
}

TEST(StreamIo, LargeImage)
{
	for (auto aead : {CRIUSEC_AEAD_AES_256_GCM, CRIUSEC_AEAD_CHACHA20_POLY1305}) {
		auto ctx = own(criusec_ctx_new(aead));
		auto pt = pattern(8 * 1024 * 1024 + 17, 11);
		auto o = open_fd(ctx.get(), seal_fd(ctx.get(), pt));
		ASSERT_EQ(o.rc, 0) << o.error;
		EXPECT_EQ(o.out, pt);
	}
}

/* ---- the internal chunk API's own contract ---- */

TEST(StreamInternal, SealerEnforcesChunkRules)
{
	auto c = Ctx::create(AeadAlg::Aes256Gcm, 4096);
	ASSERT_TRUE(c.ok());
	auto s = StreamSealer::start(c.value(), "core", "x");
	ASSERT_TRUE(s.ok());
	std::vector<uint8_t> pt(100), out(116), full(4096), fout(4112), none, tag(16);
	EXPECT_FALSE(s.value().seal_chunk(pt, false, out).ok()); /* short non-final */
	ASSERT_TRUE(s.value().seal_chunk(full, false, fout).ok());
	EXPECT_FALSE(s.value().seal_chunk(none, true, tag).ok()); /* empty final after a chunk */
	ASSERT_TRUE(s.value().seal_chunk(pt, true, out).ok());
	EXPECT_FALSE(s.value().seal_chunk(pt, true, out).ok()); /* already finished */
	EXPECT_EQ(sealed_size(0, 4096), 44u);
	EXPECT_EQ(sealed_size(4096, 4096), 28u + 4096 + 16);
	EXPECT_EQ(sealed_size(4097, 4096), 28u + 4097 + 32);
	EXPECT_EQ(sealed_size(SIZE_MAX - 10, 4096), 0u);
}

TEST(StreamInternal, CounterNearAndAtItsLimit)
{
	auto c = Ctx::create(AeadAlg::Aes256Gcm, 4096);
	ASSERT_TRUE(c.ok());
	auto s = StreamSealer::start(c.value(), "core", "x");
	ASSERT_TRUE(s.ok());
	auto o = StreamOpener::start(c.value(), "core", "x", s.value().header());
	ASSERT_TRUE(o.ok());
	std::vector<uint8_t> full(4096, 1), sealed(4112), plain(4096);

	/* High counters use the upper nonce bytes: sealer and opener agree there too. */
	const uint64_t high = (uint64_t(1) << 56) + 5;
	s.value().skip_to_chunk_for_testing(high);
	ASSERT_TRUE(s.value().seal_chunk(full, false, sealed).ok());
	o.value().skip_to_chunk_for_testing(high - 1);
	EXPECT_FALSE(o.value().open_chunk(sealed, true, plain).ok()); /* wrong chunk number */
	o.value().skip_to_chunk_for_testing(high);
	auto n = o.value().open_chunk(sealed, true, plain);
	ASSERT_TRUE(n.ok()) << n.status().message();
	EXPECT_EQ(plain, full);

	/* The last usable number, then overflow on both sides. */
	s.value().skip_to_chunk_for_testing(UINT64_MAX - 1);
	ASSERT_TRUE(s.value().seal_chunk(full, false, sealed).ok());
	Status st = s.value().seal_chunk(full, false, sealed);
	EXPECT_EQ(st.err(), EOVERFLOW);
	EXPECT_EQ(st.message(), "chunk counter overflow");
	o.value().skip_to_chunk_for_testing(UINT64_MAX);
	auto r = o.value().open_chunk(sealed, true, plain);
	ASSERT_FALSE(r.ok());
	EXPECT_EQ(r.status().message(), "chunk counter overflow");
}

} /* namespace */

/* ---- grants: one stream sealed by a process without the master key ---- */

namespace {

std::vector<uint8_t> grant_for(criusec_ctx *ctx, const char *kind, const char *name)
{
	std::vector<uint8_t> g(CRIUSEC_GRANT_MAX);
	size_t len = 0;
	EXPECT_EQ(criusec_stream_grant(ctx, kind, name, g.data(), &len), 0) << criusec_last_error();
	g.resize(len);
	return g;
}

Outcome seal_granted(const std::vector<uint8_t> &g, const std::vector<uint8_t> &pt, const char *kind,
		     const char *name)
{
	int in = memfd_with(pt);
	int out = memfd_create("out", MFD_CLOEXEC);
	Outcome o;
	o.rc = criusec_stream_seal_granted_fd(g.data(), g.size(), kind, name, in, out);
	o.error = criusec_last_error();
	o.out = memfd_contents(out);
	close(in);
	close(out);
	return o;
}

} /* namespace */

TEST(StreamGrant, SealsWhatTheCheckpointKeyOpens)
{
	for (auto [aead, chunk] : {std::tuple{AeadAlg::Aes256Gcm, 65536u}, std::tuple{AeadAlg::ChaCha20Poly1305, 4096u}}) {
		auto ctx = own(make_ctx(aead, chunk));
		for (size_t len : lengths_for(chunk)) {
			auto pt = pattern(len, static_cast<uint32_t>(len) + 5);
			auto g = grant_for(ctx.get(), "pagemap", "pagemap-7.img");
			auto s = seal_granted(g, pt, "pagemap", "pagemap-7.img");
			ASSERT_EQ(s.rc, 0) << s.error;
			EXPECT_EQ(s.out.size(), expected_sealed(len, chunk));
			auto o = open_fd(ctx.get(), s.out, "pagemap", "pagemap-7.img");
			ASSERT_EQ(o.rc, 0) << o.error;
			EXPECT_EQ(o.out, pt);
			/* Bound to its image like any stream. */
			EXPECT_NE(open_fd(ctx.get(), s.out, "pagemap", "pagemap-8.img").rc, 0);
			EXPECT_NE(open_fd(ctx.get(), s.out, "core", "pagemap-7.img").rc, 0);
		}
	}
}

TEST(StreamGrant, FreshSaltEachTime)
{
	auto ctx = own(criusec_ctx_new(CRIUSEC_AEAD_AES_256_GCM));
	auto g1 = grant_for(ctx.get(), "pagemap", "pagemap-1.img");
	auto g2 = grant_for(ctx.get(), "pagemap", "pagemap-1.img");
	ASSERT_EQ(g1.size(), g2.size());
	EXPECT_NE(g1, g2);
}

TEST(StreamGrant, SealsOnlyItsOwnImage)
{
	auto ctx = own(criusec_ctx_new(CRIUSEC_AEAD_AES_256_GCM));
	auto g = grant_for(ctx.get(), "pagemap", "pagemap-1.img");
	auto pt = pattern(100, 1);
	for (auto [kind, name] : {std::pair{"pagemap", "pagemap-2.img"}, std::pair{"core", "pagemap-1.img"},
				  std::pair{"pagemap", "pagemap-1.im"}, std::pair{"pagemapx", "pagemap-1.img"}}) {
		auto s = seal_granted(g, pt, kind, name);
		EXPECT_LT(s.rc, 0) << kind << " " << name;
		EXPECT_NE(s.error.find("grant"), std::string::npos) << s.error;
		EXPECT_TRUE(s.out.empty());
	}
}

TEST(StreamGrant, MalformedGrantsRefused)
{
	auto ctx = own(criusec_ctx_new(CRIUSEC_AEAD_AES_256_GCM));
	auto g = grant_for(ctx.get(), "pagemap", "pagemap-1.img");
	auto pt = pattern(100, 2);
	std::vector<std::vector<uint8_t>> bad;
	for (size_t cut : {size_t(0), size_t(7), size_t(83), g.size() - 1})
		bad.emplace_back(g.begin(), g.begin() + static_cast<long>(cut));
	auto longer = g;
	longer.push_back(0);
	bad.push_back(longer);
	for (size_t at : {size_t(0), size_t(8), size_t(8 + 8), size_t(8 + 9), size_t(8 + 10), size_t(8 + 11),
			  size_t(84), size_t(85)}) {
		auto t = g;
		t[at] ^= 0x40;
		bad.push_back(t);
	}
	for (size_t i = 0; i < bad.size(); i++) {
		auto s = seal_granted(bad[i], pt, "pagemap", "pagemap-1.img");
		EXPECT_LT(s.rc, 0) << "case " << i;
		EXPECT_FALSE(s.error.empty()) << "case " << i;
	}
	/* A flipped key or salt still seals, but nothing the checkpoint opens. */
	for (size_t at : {size_t(8 + 12), size_t(8 + 28), size_t(8 + 28 + 16)}) {
		auto t = g;
		t[at] ^= 1;
		auto s = seal_granted(t, pt, "pagemap", "pagemap-1.img");
		ASSERT_EQ(s.rc, 0) << s.error;
		EXPECT_NE(open_fd(ctx.get(), s.out, "pagemap", "pagemap-1.img").rc, 0) << at;
	}
	EXPECT_LT(criusec_stream_seal_granted_fd(nullptr, 0, "pagemap", "pagemap-1.img", 0, 1), 0);
	size_t len;
	EXPECT_LT(criusec_stream_grant(ctx.get(), "pagemap", "", g.data(), &len), 0);
}
