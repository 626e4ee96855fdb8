/*
 * Compression before encryption: the bounded codec, compressed streams and
 * page images in regions (round trips, random access, dedup, tampering).
 */
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <mutex>
#include <string>
#include <vector>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "compress.h"
#include "ctx.h"
#include "io.h"
#include "pages.h"
#include "stream.h"
#include "test_util.h"

using namespace criusec;
using criusec::test::pattern;

namespace {

void write_file(const std::string &path, std::span<const uint8_t> data)
{
	int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
	ASSERT_GE(fd, 0);
	ASSERT_TRUE(write_full(fd, data).ok());
	close(fd);
}

std::vector<uint8_t> read_file(const std::string &path)
{
	int fd = open(path.c_str(), O_RDONLY);
	struct stat st;
	std::vector<uint8_t> v;
	if (fd >= 0 && fstat(fd, &st) == 0) {
		v.resize(static_cast<size_t>(st.st_size));
		if (!read_full(fd, v).ok())
			v.clear();
	}
	if (fd >= 0)
		close(fd);
	return v;
}

/* Text-like pages: compress several times. */
std::vector<uint8_t> text(size_t n, uint32_t seed = 1)
{
	std::vector<uint8_t> v;
	v.reserve(n + 64);
	for (uint32_t k = seed; v.size() < n; k++) {
		std::string line = "ts=" + std::to_string(k * 7919u) + " level=INFO user=u" + std::to_string(k % 97) +
				   " msg=request served\n";
		v.insert(v.end(), line.begin(), line.end());
	}
	v.resize(n);
	return v;
}

Ctx make_ctx(CompressAlg alg, uint8_t seed = 3)
{
	std::vector<uint8_t> mk(32, seed);
	Id id;
	id.fill(static_cast<uint8_t>(seed + 1));
	auto c = Ctx::from_master_key(mk, id, AeadAlg::Aes256Gcm, 65536);
	EXPECT_TRUE(c.ok());
	EXPECT_TRUE(c.value().set_compress(alg).ok());
	return std::move(c).value();
}

class Codec : public ::testing::TestWithParam<CompressAlg> {};

TEST_P(Codec, RoundTripAndBounds)
{
	auto c = BlockCodec::create(GetParam());
	ASSERT_TRUE(c.ok());
	auto pt = text(256 * 1024);
	std::vector<uint8_t> out(pt.size());
	auto n = c.value().compress(pt, out);
	ASSERT_TRUE(n.ok());
	ASSERT_GT(n.value(), 0u);
	EXPECT_LT(n.value(), pt.size() / 3);
	std::vector<uint8_t> back(pt.size());
	auto d = c.value().decompress(std::span(out).first(n.value()), back, true);
	ASSERT_TRUE(d.ok()) << d.status().message();
	EXPECT_EQ(back, pt);
	/* Exactly: one byte less room, or asked for one more, fails. */
	std::vector<uint8_t> small(pt.size() - 1), big(pt.size() + 4096);
	EXPECT_FALSE(c.value().decompress(std::span(out).first(n.value()), small, false).ok());
	EXPECT_FALSE(c.value().decompress(std::span(out).first(n.value()), big, true).ok());
	/* A truncated block never decompresses to the size. */
	EXPECT_FALSE(c.value().decompress(std::span(out).first(n.value() - 1), back, true).ok());
}

TEST_P(Codec, RandomBytesAreNotCompressed)
{
	auto c = BlockCodec::create(GetParam());
	ASSERT_TRUE(c.ok());
	auto pt = pattern(256 * 1024, 9);
	std::vector<uint8_t> out(pt.size() - 1);
	auto n = c.value().compress(pt, out);
	ASSERT_TRUE(n.ok());
	EXPECT_EQ(n.value(), 0u);
}

TEST_P(Codec, GarbageNeverWritesOutOfBounds)
{
	auto c = BlockCodec::create(GetParam());
	ASSERT_TRUE(c.ok());
	for (uint32_t seed = 0; seed < 200; seed++) {
		auto junk = pattern(1 + seed * 37 % 5000, seed);
		std::vector<uint8_t> out(4096 + 64, 0xa5);
		auto r = c.value().decompress(junk, std::span(out).first(4096), false);
		if (r.ok()) {
			EXPECT_LE(r.value(), 4096u);
		}
		for (size_t k = 4096; k < out.size(); k++)
			ASSERT_EQ(out[k], 0xa5) << "wrote past the bound";
	}
}

TEST(Codec, ZstdRefusesTwoFrames)
{
	auto c = BlockCodec::create(CompressAlg::Zstd);
	ASSERT_TRUE(c.ok());
	auto pt = text(8192);
	std::vector<uint8_t> out(8192);
	auto n = c.value().compress(pt, out);
	ASSERT_TRUE(n.ok() && n.value());
	std::vector<uint8_t> two(out.begin(), out.begin() + static_cast<long>(n.value()));
	two.insert(two.end(), two.begin(), two.end());
	std::vector<uint8_t> back(16384);
	EXPECT_FALSE(c.value().decompress(two, back, false).ok());
}

INSTANTIATE_TEST_SUITE_P(All, Codec, ::testing::Values(CompressAlg::Lz4, CompressAlg::Zstd),
			 [](const auto &i) { return std::string(compress_name(i.param)); });

class CompressedStream : public ::testing::TestWithParam<CompressAlg> {};

TEST_P(CompressedStream, RoundTripsShrinkAndBindTheirCompression)
{
	Ctx ctx = make_ctx(GetParam());
	for (size_t len : {size_t{0}, size_t{1}, kStreamBlock - 1, kStreamBlock, kStreamBlock + 1, 3 * kStreamBlock + 7}) {
		auto pt = text(len, static_cast<uint32_t>(len));
		std::vector<uint8_t> st;
		StreamInfo info;
		ASSERT_TRUE(seal_vector(ctx, "ghost-file", "ghost-1.img", pt, st, &info).ok());
		EXPECT_EQ(st[11], static_cast<uint8_t>(GetParam()));
		if (len > 4096) {
			EXPECT_LT(st.size(), pt.size() / 2) << len;
		}
		std::vector<uint8_t> back(std::max(st.size(), pt.size()) + 16);
		auto n = open_buffer(ctx, "ghost-file", "ghost-1.img", st, back, &info);
		ASSERT_TRUE(n.ok()) << len << ": " << n.status().message();
		back.resize(n.value());
		EXPECT_EQ(back, pt);
		/* The stream's compression byte is authenticated. */
		if (len) {
			auto t = st;
			t[11] = t[11] == 1 ? 2 : 1;
			Ctx other = make_ctx(static_cast<CompressAlg>(t[11]));
			std::vector<uint8_t> b2(back.size() + st.size());
			EXPECT_FALSE(open_buffer(other, "ghost-file", "ghost-1.img", t, b2).ok());
		}
	}
	/* A compressed stream in a checkpoint that does not compress: refused. */
	std::vector<uint8_t> st;
	ASSERT_TRUE(seal_vector(ctx, "core", "core-1.img", text(1000), st).ok());
	Ctx plain = make_ctx(CompressAlg::None);
	std::vector<uint8_t> back(4096);
	auto n = open_buffer(plain, "core", "core-1.img", st, back);
	ASSERT_FALSE(n.ok());
	EXPECT_NE(n.status().message().find("compression"), std::string::npos) << n.status().message();
}

TEST_P(CompressedStream, UncompressedStreamsOfACompressingCheckpointOpen)
{
	Ctx none = make_ctx(CompressAlg::None);
	Ctx ctx = make_ctx(GetParam());
	auto pt = text(100000);
	std::vector<uint8_t> st;
	ASSERT_TRUE(seal_vector(none, "core", "core-1.img", pt, st).ok());
	std::vector<uint8_t> back(st.size());
	auto n = open_buffer(ctx, "core", "core-1.img", st, back);
	ASSERT_TRUE(n.ok()) << n.status().message();
	back.resize(n.value());
	EXPECT_EQ(back, pt);
}

TEST_P(CompressedStream, FdFormsAgreeWithBuffers)
{
	Ctx ctx = make_ctx(GetParam());
	test::TempDir d;
	auto pt = text(700000);
	write_file(d.file("in"), pt);
	int in = open(d.file("in").c_str(), O_RDONLY), out = open(d.file("st").c_str(), O_RDWR | O_CREAT, 0600);
	StreamInfo info;
	ASSERT_TRUE(seal_fd(ctx, "pipes-data", "pipes-data-1.img", in, out, &info).ok());
	ASSERT_EQ(lseek(out, 0, SEEK_SET), 0);
	int plain = open(d.file("pt").c_str(), O_RDWR | O_CREAT, 0600);
	ASSERT_TRUE(open_fd(ctx, "pipes-data", "pipes-data-1.img", out, plain, &info).ok());
	EXPECT_EQ(read_file(d.file("pt")), pt);
	close(in);
	close(out);
	close(plain);
}

INSTANTIATE_TEST_SUITE_P(All, CompressedStream, ::testing::Values(CompressAlg::Lz4, CompressAlg::Zstd),
			 [](const auto &i) { return std::string(compress_name(i.param)); });

/* ---- page images in regions ---- */

constexpr uint64_t kVaddr = 0x7f0000100000;

/* 300 pages: text, then random (pages 140..269: two whole regions and more), then text. */
std::vector<uint8_t> mixed_pages()
{
	auto v = text(300 * kPageSize);
	auto r = pattern(130 * kPageSize, 5);
	std::copy(r.begin(), r.end(), v.begin() + 140 * kPageSize);
	return v;
}

struct Sealed {
	std::vector<uint8_t> file, index;
	size_t writes = 0; /* calls of the sink */
};

Sealed seal_pages(const Ctx &ctx, const std::vector<uint8_t> &pt, const char *name = "pages-1.img")
{
	test::TempDir d;
	write_file(d.file("pt"), pt);
	int fd = open(d.file("pt").c_str(), O_RDONLY);
	auto pool = PagePool::create(ctx, name);
	EXPECT_TRUE(pool.ok());
	Sealed s;
	auto sink = [&](std::span<const uint8_t> b) -> Status {
		s.file.insert(s.file.end(), b.begin(), b.end());
		return {};
	};
	/* Two runs, as two pagemap entries at other addresses. */
	EXPECT_TRUE(pool.value().append_pipe(fd, sink, kVaddr, 200 * kPageSize).ok());
	EXPECT_TRUE(pool.value().append_pipe(fd, sink, kVaddr + 0x10000000, pt.size() - 200 * kPageSize).ok());
	close(fd);
	s.index = pool.value().index();
	return s;
}

Status read_pages(const Ctx &ctx, const Sealed &s, uint64_t vaddr, uint64_t first, std::span<uint8_t> out,
		  const char *name = "pages-1.img")
{
	test::TempDir d;
	write_file(d.file("img"), s.file);
	int fd = open(d.file("img").c_str(), O_RDONLY);
	auto pool = PagePool::create(ctx, name);
	if (!pool.ok())
		return std::move(pool).status();
	Status st = pool.value().attach(s.index, s.file.size());
	if (st.ok())
		st = pool.value().read(fd, vaddr, first, out);
	close(fd);
	return st;
}

class Regions : public ::testing::TestWithParam<CompressAlg> {};

TEST_P(Regions, ShrinkAndReadBackAtRandom)
{
	Ctx ctx = make_ctx(GetParam());
	auto pt = mixed_pages();
	auto s = seal_pages(ctx, pt);
	EXPECT_LT(s.file.size(), pt.size() * 3 / 4); /* 130 of 300 pages are random */
	/* Whole runs, then pieces that start and end inside regions. */
	std::vector<uint8_t> out(200 * kPageSize);
	ASSERT_TRUE(read_pages(ctx, s, kVaddr, 0, out).ok());
	EXPECT_TRUE(std::equal(out.begin(), out.end(), pt.begin()));
	for (auto [first, n] : {std::pair<size_t, size_t>{3, 1}, {63, 2}, {100, 90}, {130, 20}, {199, 1}, {150, 40}}) {
		std::vector<uint8_t> part(n * kPageSize);
		auto st = read_pages(ctx, s, kVaddr + first * kPageSize, first, part);
		ASSERT_TRUE(st.ok()) << first << ": " << st.message();
		EXPECT_TRUE(std::equal(part.begin(), part.end(), pt.begin() + static_cast<long>(first * kPageSize)));
	}
	std::vector<uint8_t> tail(100 * kPageSize);
	ASSERT_TRUE(read_pages(ctx, s, kVaddr + 0x10000000, 200, tail).ok());
	EXPECT_TRUE(std::equal(tail.begin(), tail.end(), pt.begin() + 200 * kPageSize));
}

TEST_P(Regions, EveryTamperIsRefused)
{
	Ctx ctx = make_ctx(GetParam());
	auto pt = mixed_pages();
	auto s = seal_pages(ctx, pt);
	std::vector<uint8_t> out(64 * kPageSize);
	auto refused = [&](const Sealed &t, uint64_t vaddr, uint64_t first, const char *why) {
		auto st = read_pages(ctx, t, vaddr, first, out);
		EXPECT_FALSE(st.ok()) << why;
		EXPECT_TRUE(std::all_of(out.begin(), out.end(), [](uint8_t b) { return b == 0; })) << why;
	};
	/* A flipped byte in the first (compressed) region. */
	auto t = s;
	t.file[100] ^= 1;
	refused(t, kVaddr, 0, "flipped");
	/* The region read at another address, or as other pages. */
	refused(s, kVaddr + kPageSize, 0, "moved");
	refused(s, kVaddr + 64 * kPageSize, 0, "moved by a region");
	/* Regions 0 and 1 swapped, records and bytes. */
	{
		uint32_t len0, len1;
		std::memcpy(&len0, &s.index[4], 4);
		std::memcpy(&len1, &s.index[12], 4);
		len0 = __builtin_bswap32(len0);
		len1 = __builtin_bswap32(len1);
		ASSERT_TRUE(len0 && len1);
		t = s;
		std::copy(s.index.begin() + 8, s.index.begin() + 16, t.index.begin());
		std::copy(s.index.begin(), s.index.begin() + 8, t.index.begin() + 8);
		t.file.assign(s.file.begin() + len0, s.file.begin() + len0 + len1);
		t.file.insert(t.file.end(), s.file.begin(), s.file.begin() + len0);
		t.file.insert(t.file.end(), s.file.begin() + len0 + len1, s.file.end());
		refused(t, kVaddr, 0, "swapped");
	}
	/* Truncated: the file, or a region with its record. */
	t = s;
	t.file.pop_back();
	refused(t, kVaddr, 0, "file truncated");
	t = s;
	t.index[7] -= 1;
	refused(t, kVaddr, 0, "record shortened");
	/* Pages of another image, and of another checkpoint. */
	auto other = seal_pages(ctx, pt, "pages-2.img");
	refused(other, kVaddr, 0, "another image");
	auto foreign = seal_pages(make_ctx(GetParam(), 9), pt);
	refused(foreign, kVaddr, 0, "another checkpoint");
	/* Bad records. */
	t = s;
	t.index.resize(t.index.size() - 3);
	refused(t, kVaddr, 0, "index cut");
	t = s;
	t.index[3] = 0;
	t.index[2] = 0;
	refused(t, kVaddr, 0, "zero pages");
}

TEST_P(Regions, DedupPunchesWholeRegions)
{
	Ctx ctx = make_ctx(GetParam());
	auto pt = mixed_pages();
	auto s = seal_pages(ctx, pt);
	test::TempDir d;
	write_file(d.file("img"), s.file);
	int fd = open(d.file("img").c_str(), O_RDWR);
	auto pool = PagePool::create(ctx, "pages-1.img");
	ASSERT_TRUE(pool.ok());
	ASSERT_TRUE(pool.value().attach(s.index, s.file.size()).ok());
	/* What the restore's pagemap check counts, without the image. */
	auto counted = PagePool::index_extent(ctx, s.index);
	ASSERT_TRUE(counted.ok());
	EXPECT_EQ(counted.value().pages, pool.value().pages());
	EXPECT_EQ(counted.value().bytes, s.file.size());
	EXPECT_FALSE(PagePool::index_extent(ctx, std::span<const uint8_t>(s.index).first(s.index.size() - 1)).ok());
	/* attach()'s size check alone (a dump's parent): the same verdict. */
	EXPECT_TRUE(PagePool::check_file(ctx, s.index, s.file.size()).ok());
	auto cut = PagePool::check_file(ctx, s.index, s.file.size() - 1);
	ASSERT_FALSE(cut.ok());
	EXPECT_NE(cut.message().find("truncated or extended"), std::string::npos) << cut.message();
	struct stat st0, st1;
	ASSERT_EQ(fstat(fd, &st0), 0);
	std::vector<std::pair<uint64_t, uint64_t>> holes;
	auto hole = [&](uint64_t off, uint64_t len) -> Status {
		holes.emplace_back(off, len);
		if (fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, static_cast<off_t>(off),
			      static_cast<off_t>(len)))
			return Status::error(errno, "fallocate");
		return {};
	};
	/* Half of region 0: nothing goes; all of it: it goes whole, and reads fail. */
	ASSERT_TRUE(pool.value().punch(0, 32, hole).ok());
	EXPECT_TRUE(holes.empty());
	std::vector<uint8_t> out(kPageSize);
	EXPECT_TRUE(pool.value().read(fd, kVaddr + 40 * kPageSize, 40, out).ok());
	ASSERT_TRUE(pool.value().punch(32, 32, hole).ok());
	ASSERT_EQ(holes.size(), 1u);
	EXPECT_EQ(holes[0].first, 0u);
	EXPECT_EQ(holes[0].second, pool.value().regions()[0].stored);
	ASSERT_EQ(fstat(fd, &st1), 0);
	EXPECT_EQ(st1.st_size, st0.st_size);
	EXPECT_FALSE(pool.value().read(fd, kVaddr + 40 * kPageSize, 40, out).ok());
	/* Region 1 is untouched. */
	EXPECT_TRUE(pool.value().read(fd, kVaddr + 70 * kPageSize, 70, out).ok());
	close(fd);
}

INSTANTIATE_TEST_SUITE_P(All, Regions, ::testing::Values(CompressAlg::Lz4, CompressAlg::Zstd),
			 [](const auto &i) { return std::string(compress_name(i.param)); });

/*
 * Writing behind (criu's local page images): append_pipe returns once its
 * pages are read, helpers seal and write them later, perhaps on other
 * threads.  The file and the pagetags must be byte for byte those of the
 * pool that writes before it returns, over runs of every size.
 */
class WriteBehind : public ::testing::TestWithParam<CompressAlg> {};

/* Runs as CRIU hands them: a page, pipes' worth, and odd sizes at other addresses. */
const std::vector<size_t> kMixedRuns = {1, 256, 3, 256, 64, 65, 700, 1};
/* A final dump of a chain: the pages written since the last pass, mostly one at a time. */
const std::vector<size_t> kScatteredRuns = {1, 1, 1, 1, 1, 1, 1, 2, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 3, 1, 1, 1, 1, 1,
					    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 64, 1, 1};

Sealed seal_runs(const Ctx &ctx, const std::vector<uint8_t> &pt, bool behind, std::mutex *mu = nullptr,
		 size_t fail_at = SIZE_MAX, const std::vector<size_t> &runs = kMixedRuns)
{
	test::TempDir d;
	write_file(d.file("pt"), pt);
	int fd = open(d.file("pt").c_str(), O_RDONLY);
	auto pool = PagePool::create(ctx, "pages-1.img");
	EXPECT_TRUE(pool.ok());
	Sealed s;
	size_t calls = 0;
	auto sink = [&s, mu, &calls, fail_at](std::span<const uint8_t> b) -> Status {
		std::unique_lock<std::mutex> lk;
		if (mu)
			lk = std::unique_lock<std::mutex>(*mu);
		if (++calls >= fail_at)
			return Status::error(ENOSPC, "can't write pages");
		s.file.insert(s.file.end(), b.begin(), b.end());
		return {};
	};
	if (behind)
		pool.value().write_behind();
	size_t off = 0, k = 0;
	Status st;
	while (off < pt.size() && st.ok()) {
		size_t n = std::min(runs[k++ % runs.size()] * kPageSize, pt.size() - off);
		st = pool.value().append_pipe(fd, sink, kVaddr + k * 0x1000000 + off, n);
		off += n;
	}
	/* Always: nothing may be written to s after this returns. */
	Status fl = pool.value().flush();
	if (st.ok())
		st = fl;
	close(fd);
	s.writes = calls;
	if (!st.ok())
		s.file.clear();
	else
		s.index = pool.value().index();
	return s;
}

/* mixed_pages() n times over */
std::vector<uint8_t> mixed_pages_times(int n)
{
	std::vector<uint8_t> pt;
	for (int i = 0; i < n; i++) {
		auto more = mixed_pages();
		pt.insert(pt.end(), more.begin(), more.end());
	}
	return pt;
}

/* Writing behind, round after round: the bytes and the index of the pool that writes before it returns. */
void expect_same_behind(const Ctx &ctx, const std::vector<uint8_t> &pt, const std::vector<size_t> &runs, int rounds)
{
	Sealed want = seal_runs(ctx, pt, false, nullptr, SIZE_MAX, runs);
	ASSERT_FALSE(want.file.empty());
	std::mutex mu;
	for (int i = 0; i < rounds; i++) {
		Sealed got = seal_runs(ctx, pt, true, &mu, SIZE_MAX, runs);
		ASSERT_EQ(got.file.size(), want.file.size()) << "round " << i;
		size_t diff = std::mismatch(got.file.begin(), got.file.end(), want.file.begin()).first - got.file.begin();
		ASSERT_EQ(got.file, want.file) << "round " << i << " first difference at " << diff;
		ASSERT_EQ(got.index, want.index) << "round " << i;
	}
}

TEST_P(WriteBehind, SameBytesAsWritingBeforeReturning)
{
	/* More than a ring's worth, so that slots are reused while runs go on. */
	expect_same_behind(make_ctx(GetParam()), mixed_pages_times(7), kMixedRuns, 3);
}

/*
 * One-page runs are read by the caller and sealed by a helper, and written
 * gathered, a megabyte at a time: still the same bytes, in order, and a
 * failed write of any of them fails the whole.
 */
TEST_P(WriteBehind, ScatteredPagesSameBytesAsWritingBeforeReturning)
{
	Ctx ctx = make_ctx(GetParam());
	auto pt = mixed_pages_times(4);
	expect_same_behind(ctx, pt, kScatteredRuns, 5);
	std::mutex mu;
	Sealed all = seal_runs(ctx, pt, true, &mu, SIZE_MAX, kScatteredRuns);
	Sealed before = seal_runs(ctx, pt, false, nullptr, SIZE_MAX, kScatteredRuns);
	EXPECT_LT(all.writes, before.writes / 8) << "scattered pieces are not gathered";
	for (size_t fail_at : {size_t{1}, all.writes / 2, all.writes})
		EXPECT_TRUE(seal_runs(ctx, pt, true, &mu, fail_at, kScatteredRuns).file.empty()) << fail_at;
}

TEST_P(WriteBehind, AFailedWriteFailsTheFlushOrALaterRun)
{
	Ctx ctx = make_ctx(GetParam());
	auto pt = mixed_pages_times(5);
	std::mutex mu;
	for (size_t fail_at : {1, 2, 7})
		EXPECT_TRUE(seal_runs(ctx, pt, true, &mu, fail_at).file.empty()) << fail_at;
}

TEST_P(WriteBehind, APoolFreedWithPagesBehindDropsThem)
{
	Ctx ctx = make_ctx(GetParam());
	auto pt = pattern(40 * 64 * kPageSize, 11);
	test::TempDir d;
	write_file(d.file("pt"), pt);
	int fd = open(d.file("pt").c_str(), O_RDONLY);
	std::mutex mu;
	size_t bytes = 0;
	{
		auto pool = PagePool::create(ctx, "pages-1.img");
		ASSERT_TRUE(pool.ok());
		pool.value().write_behind();
		auto sink = [&](std::span<const uint8_t> b) -> Status {
			std::lock_guard<std::mutex> lk(mu);
			bytes += b.size();
			return {};
		};
		ASSERT_TRUE(pool.value().append_pipe(fd, sink, kVaddr, pt.size()).ok());
		/* Freed without a flush (a failed dump): no hang, no write after this scope. */
	}
	std::lock_guard<std::mutex> lk(mu);
	EXPECT_LE(bytes, pt.size());
	close(fd);
}

INSTANTIATE_TEST_SUITE_P(All, WriteBehind, ::testing::Values(CompressAlg::None, CompressAlg::Lz4, CompressAlg::Zstd),
			 [](const auto &i) { return std::string(compress_name(i.param)); });

/*
 * One read of many regions (restore reads a VMA in one call) is shared by
 * workers from both ends: a tampered region anywhere in it fails all of
 * it, and none of its pages is left.
 */
TEST_P(Regions, ATamperedRegionFailsALongReadWherever)
{
	Ctx ctx = make_ctx(GetParam());
	/* 1000 pages of text in one run (at kVaddr + 16 MiB): 16 regions, each compressed. */
	auto pt = text(1000 * kPageSize);
	auto s = seal_runs(ctx, pt, false, nullptr, SIZE_MAX, {1000});
	const uint64_t vaddr = kVaddr + 0x1000000;
	/* Where each region's bytes start: records of u32 pages, u32 stored (big-endian). */
	std::vector<size_t> starts;
	size_t off = 0;
	for (size_t pos = 0; pos + 8 <= s.index.size(); pos += 8) {
		uint32_t stored;
		std::memcpy(&stored, &s.index[pos + 4], 4);
		stored = __builtin_bswap32(stored);
		ASSERT_NE(stored, 0u) << "text must compress";
		starts.push_back(off);
		off += stored;
	}
	ASSERT_EQ(starts.size(), 16u);
	ASSERT_EQ(off, s.file.size());
	std::vector<uint8_t> out(pt.size());
	ASSERT_TRUE(read_pages(ctx, s, vaddr, 0, out).ok());
	EXPECT_EQ(out, pt);
	for (size_t r : {size_t{0}, size_t{1}, size_t{7}, size_t{8}, size_t{14}, size_t{15}}) {
		auto t = s;
		t.file[starts[r] + 20] ^= 0x40;
		std::fill(out.begin(), out.end(), 0xa5);
		EXPECT_FALSE(read_pages(ctx, t, vaddr, 0, out).ok()) << "region " << r;
		EXPECT_TRUE(std::all_of(out.begin(), out.end(), [](uint8_t b) { return b == 0; })) << "region " << r;
	}
}

TEST(CompressHeader, IsAuthenticatedAndChecked)
{
	Ctx ctx = make_ctx(CompressAlg::Zstd);
	HeaderView h = ctx.header();
	h.version = 2;
	auto canon = canonical_header(h);
	h.compress = 1;
	EXPECT_NE(canonical_header(h), canon);
	h.compress = 3;
	h.recipients.push_back({std::span<const uint8_t, kFprLen>(canon.data(), kFprLen), 1, canon});
	auto st = check_structure(h);
	ASSERT_FALSE(st.ok());
	EXPECT_EQ(st.err(), EOPNOTSUPP);
	h.compress = 1;
	h.version = 1;
	EXPECT_FALSE(check_structure(h).ok()) << "format 1 with a compress field";
}

} /* namespace */
