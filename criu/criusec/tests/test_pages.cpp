/* The page cipher: round trips, identity binding, and every tamper class. */
#include <gtest/gtest.h>

#include <algorithm>
#include <thread>
#include <vector>

#include <fcntl.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "ctx.h"
#include "pages.h"
#include "io.h"
#include "capi_testing.h"
#include "test_util.h"

using namespace criusec;
using criusec::test::pattern;

namespace {

Ctx make_ctx(uint8_t seed)
{
	std::vector<uint8_t> mk(32, seed);
	Id id;
	id.fill(static_cast<uint8_t>(seed + 1));
	auto c = Ctx::from_master_key(mk, id, AeadAlg::Aes256Gcm, 65536);
	EXPECT_TRUE(c.ok());
	return std::move(c).value();
}

PageCipher make(const Ctx &ctx, const char *name = "pages-1.img")
{
	auto p = PageCipher::create(ctx, name);
	EXPECT_TRUE(p.ok()) << p.status().message();
	return std::move(p).value();
}

constexpr uint64_t kVaddr = 0x7f0000100000;

struct Sealed {
	std::vector<uint8_t> pt, ct, tags;
};

Sealed seal(PageCipher &pc, size_t n, uint64_t vaddr = kVaddr, uint64_t index = 0)
{
	Sealed s;
	s.pt = pattern(n * kPageSize, 7);
	s.ct = s.pt;
	s.tags.resize(n * kPageTagLen);
	EXPECT_TRUE(pc.seal(vaddr, index, s.ct, s.tags).ok());
	return s;
}

} /* namespace */

TEST(Pages, RoundTripInPlaceAndLengthPreserving)
{
	Ctx ctx = make_ctx(1);
	PageCipher pc = make(ctx);
	for (size_t n : {1, 2, 17, 256}) {
		Sealed s = seal(pc, n, kVaddr, 3);
		ASSERT_EQ(s.ct.size(), s.pt.size());
		ASSERT_NE(s.ct, s.pt);
		auto back = s.ct;
		ASSERT_TRUE(pc.open(kVaddr, 3, back, s.tags).ok());
		ASSERT_EQ(back, s.pt);
	}
}

TEST(Pages, RandomAccessToAnySubrun)
{
	Ctx ctx = make_ctx(1);
	PageCipher pc = make(ctx);
	Sealed s = seal(pc, 8, kVaddr, 10);
	/* pages 3..5 alone, as a lazy-pages fault or a page server read would */
	std::vector<uint8_t> part(s.ct.begin() + 3 * kPageSize, s.ct.begin() + 6 * kPageSize);
	std::vector<uint8_t> tags(s.tags.begin() + 3 * kPageTagLen, s.tags.begin() + 6 * kPageTagLen);
	ASSERT_TRUE(pc.open(kVaddr + 3 * kPageSize, 13, part, tags).ok());
	ASSERT_TRUE(std::equal(part.begin(), part.end(), s.pt.begin() + 3 * kPageSize));
}

TEST(Pages, EqualPagesEncryptDifferently)
{
	Ctx ctx = make_ctx(1);
	PageCipher pc = make(ctx);
	std::vector<uint8_t> zero(3 * kPageSize, 0), tags(3 * kPageTagLen);
	ASSERT_TRUE(pc.seal(kVaddr, 0, zero, tags).ok());
	ASSERT_FALSE(std::equal(zero.begin(), zero.begin() + kPageSize, zero.begin() + kPageSize));
	ASSERT_FALSE(std::equal(zero.begin() + kPageSize, zero.begin() + 2 * kPageSize, zero.begin() + 2 * kPageSize));
	/* the same page in another image, too */
	PageCipher other = make(ctx, "pages-2.img");
	std::vector<uint8_t> z2(kPageSize, 0), t2(kPageTagLen);
	ASSERT_TRUE(other.seal(kVaddr, 0, z2, t2).ok());
	ASSERT_FALSE(std::equal(z2.begin(), z2.end(), zero.begin()));
}

TEST(Pages, EveryFlippedBitOfAPageOrTagIsRefused)
{
	Ctx ctx = make_ctx(1);
	PageCipher pc = make(ctx);
	Sealed s = seal(pc, 2);
	for (size_t bit = 0; bit < 2 * kPageSize * 8; bit += 61) {
		auto ct = s.ct;
		ct[bit / 8] ^= static_cast<uint8_t>(1u << (bit % 8));
		Status st = pc.open(kVaddr, 0, ct, s.tags);
		ASSERT_FALSE(st.ok()) << bit;
		ASSERT_EQ(st.err(), EBADMSG);
		/* nothing unauthenticated is handed back */
		ASSERT_TRUE(std::all_of(ct.begin(), ct.end(), [](uint8_t b) { return b == 0; }));
	}
	for (size_t bit = 0; bit < s.tags.size() * 8; bit++) {
		auto ct = s.ct;
		auto tags = s.tags;
		tags[bit / 8] ^= static_cast<uint8_t>(1u << (bit % 8));
		ASSERT_FALSE(pc.open(kVaddr, 0, ct, tags).ok()) << bit;
	}
}

TEST(Pages, MovedSwappedOrForeignPagesAreRefused)
{
	Ctx ctx = make_ctx(1);
	PageCipher pc = make(ctx);
	Sealed s = seal(pc, 2, kVaddr, 4);
	auto ct = s.ct;
	/* at another address, at another place in the image */
	ASSERT_FALSE(pc.open(kVaddr + kPageSize, 4, ct, s.tags).ok());
	ct = s.ct;
	ASSERT_FALSE(pc.open(kVaddr, 5, ct, s.tags).ok());
	/* two pages swapped, with their tags or without */
	ct = s.ct;
	std::swap_ranges(ct.begin(), ct.begin() + kPageSize, ct.begin() + kPageSize);
	ASSERT_FALSE(pc.open(kVaddr, 4, ct, s.tags).ok());
	auto tags = s.tags;
	std::swap_ranges(tags.begin(), tags.begin() + kPageTagLen, tags.begin() + kPageTagLen);
	ct = s.ct;
	std::swap_ranges(ct.begin(), ct.begin() + kPageSize, ct.begin() + kPageSize);
	ASSERT_FALSE(pc.open(kVaddr, 4, ct, tags).ok());
	/* another image of the same checkpoint, another checkpoint */
	PageCipher img2 = make(ctx, "pages-2.img");
	ct = s.ct;
	ASSERT_FALSE(img2.open(kVaddr, 4, ct, s.tags).ok());
	Ctx ctx2 = make_ctx(9);
	PageCipher other = make(ctx2);
	ct = s.ct;
	ASSERT_FALSE(other.open(kVaddr, 4, ct, s.tags).ok());
}

TEST(Pages, BadArguments)
{
	Ctx ctx = make_ctx(1);
	ASSERT_FALSE(PageCipher::create(ctx, "").ok());
	PageCipher pc = make(ctx);
	std::vector<uint8_t> half(kPageSize / 2), tags(kPageTagLen);
	ASSERT_FALSE(pc.seal(kVaddr, 0, half, tags).ok());
	std::vector<uint8_t> page(kPageSize), few(kPageTagLen - 1);
	ASSERT_FALSE(pc.seal(kVaddr, 0, page, few).ok());
	ASSERT_EQ(criusec_pages_new(nullptr, "pages-1.img"), nullptr);
	ASSERT_NE(criusec_pages_seal(nullptr, 0, 0, page.data(), page.size(), tags.data()), 0);
}

namespace {

PagePool make_pool(const Ctx &ctx, const char *name = "pages-1.img")
{
	auto p = PagePool::create(ctx, name);
	EXPECT_TRUE(p.ok()) << p.status().message();
	return std::move(p).value();
}

/* Feed data into a pipe from another thread (a pipe holds 64 KiB), closing it after `keep` bytes. */
class PipeFeeder {
public:
	PipeFeeder(std::vector<uint8_t> data, size_t keep) : data_(std::move(data))
	{
		EXPECT_EQ(pipe(fds_), 0);
		keep = std::min(keep, data_.size());
		t_ = std::thread([this, keep] {
			for (size_t off = 0; off < keep;) {
				ssize_t n = write(fds_[1], data_.data() + off, keep - off);
				if (n <= 0)
					break;
				off += static_cast<size_t>(n);
			}
			close(fds_[1]);
		});
	}
	~PipeFeeder()
	{
		close(fds_[0]); /* a writer still blocked gets EPIPE */
		t_.join();
	}
	int fd() const { return fds_[0]; }

private:
	std::vector<uint8_t> data_;
	int fds_[2] = {-1, -1};
	std::thread t_;
};

/* A sink writing to fd, that checks it is only called on the thread that made it. */
PagePool::Sink fd_sink(int fd)
{
	return [fd, self = std::this_thread::get_id()](std::span<const uint8_t> data) -> Status {
		EXPECT_EQ(std::this_thread::get_id(), self);
		return write_full(fd, data).with_context("can't write pages");
	};
}

std::vector<uint8_t> file_bytes(int fd)
{
	off_t end = lseek(fd, 0, SEEK_END);
	std::vector<uint8_t> out(static_cast<size_t>(end));
	EXPECT_EQ(pread(fd, out.data(), out.size(), 0), end);
	return out;
}

} /* namespace */

/* The pipelined dump path writes exactly what seal() makes, whatever the run lengths. */
TEST(Pages, SealPipeWritesWhatSealMakes)
{
	Ctx ctx = make_ctx(1);
	PagePool pool = make_pool(ctx);
	PageCipher ref = make(ctx);
	int out = memfd_create("pages", MFD_CLOEXEC);
	ASSERT_GE(out, 0);
	std::vector<uint8_t> want, want_tags, tags;
	uint64_t index = 0;
	/* around the ring's 64-page pieces and 16-piece wrap, and other sizes */
	for (size_t n : {1, 2, 15, 16, 17, 63, 64, 65, 129, 512, 64 * 16 + 1, 64 * 16 * 3 + 5, 2}) {
		uint64_t vaddr = kVaddr + index * 3 * kPageSize;
		auto pt = pattern(n * kPageSize, static_cast<uint32_t>(n));
		auto ct = pt;
		std::vector<uint8_t> t(n * kPageTagLen);
		ASSERT_TRUE(ref.seal(vaddr, index, ct, t).ok());
		want.insert(want.end(), ct.begin(), ct.end());
		want_tags.insert(want_tags.end(), t.begin(), t.end());

		PipeFeeder feed(pt, pt.size());
		tags.resize(want_tags.size());
		Status st = pool.seal_pipe(feed.fd(), fd_sink(out), vaddr, index,
					   pt.size(), std::span(tags).last(n * kPageTagLen));
		ASSERT_TRUE(st.ok()) << n << ": " << st.message();
		index += n;
	}
	ASSERT_EQ(file_bytes(out), want);
	ASSERT_EQ(tags, want_tags);
	close(out);
}

TEST(Pages, SealPipeFailsCleanly)
{
	Ctx ctx = make_ctx(1);
	PagePool pool = make_pool(ctx);
	int out = memfd_create("pages", MFD_CLOEXEC);
	ASSERT_GE(out, 0);
	const size_t n = 64 * 20;
	auto pt = pattern(n * kPageSize, 3);
	std::vector<uint8_t> tags(n * kPageTagLen);
	{
		/* the pipe ends early, in a piece or at a piece's end */
		for (size_t keep : {n * kPageSize / 2 + 100, size_t{0}, 64 * kPageSize, 64 * 17 * kPageSize}) {
			PipeFeeder feed(pt, keep);
			Status st = pool.seal_pipe(feed.fd(), fd_sink(out), kVaddr, 0, pt.size(), tags);
			ASSERT_FALSE(st.ok()) << keep;
			ASSERT_NE(st.message().find("short read"), std::string::npos) << st.message();
		}
	}
	{
		/* the image can't be written */
		int ro = open("/dev/null", O_RDONLY | O_CLOEXEC);
		ASSERT_GE(ro, 0);
		PipeFeeder feed(pt, pt.size());
		Status st = pool.seal_pipe(feed.fd(), fd_sink(ro), kVaddr, 0, pt.size(), tags);
		ASSERT_FALSE(st.ok());
		ASSERT_EQ(st.err(), EBADF);
		ASSERT_NE(st.message().find("can't write pages"), std::string::npos) << st.message();
		close(ro);
	}
	{
		/* a bad pipe */
		Status st = pool.seal_pipe(-1, fd_sink(out), kVaddr, 0, pt.size(), tags);
		ASSERT_FALSE(st.ok());
		ASSERT_EQ(st.err(), EBADF);
	}
	/* bad arguments */
	ASSERT_FALSE(pool.seal_pipe(0, fd_sink(out), kVaddr, 0, kPageSize + 1, tags).ok());
	ASSERT_FALSE(pool.seal_pipe(0, fd_sink(out), kVaddr, 0, kPageSize, tags).ok());
	ASSERT_NE(criusec_pages_seal_pipe(nullptr, 0, 0, 0, kPageSize, tags.data(), nullptr, nullptr), 0);
	/* and the pool still works after all that */
	ASSERT_EQ(ftruncate(out, 0), 0);
	ASSERT_EQ(lseek(out, 0, SEEK_SET), 0);
	PipeFeeder feed(pt, pt.size());
	ASSERT_TRUE(pool.seal_pipe(feed.fd(), fd_sink(out), kVaddr, 0, pt.size(), tags).ok());
	auto ct = file_bytes(out);
	ASSERT_TRUE(pool.open(kVaddr, 0, ct, tags).ok());
	ASSERT_EQ(ct, pt);
	close(out);
}

/* A moved pool keeps its helpers' ciphers where they were. */
TEST(Pages, SealPipeAfterMoves)
{
	Ctx ctx = make_ctx(1);
	PagePool a = make_pool(ctx);
	int out = memfd_create("pages", MFD_CLOEXEC);
	ASSERT_GE(out, 0);
	const size_t n = 100;
	auto pt = pattern(n * kPageSize, 5);
	std::vector<uint8_t> tags(n * kPageTagLen);
	{
		PipeFeeder feed(pt, pt.size());
		ASSERT_TRUE(a.seal_pipe(feed.fd(), fd_sink(out), kVaddr, 0, pt.size(), tags).ok());
	}
	PagePool b = std::move(a);
	PagePool c = make_pool(ctx);
	c = std::move(b);
	std::vector<uint8_t> tags2(n * kPageTagLen);
	{
		PipeFeeder feed(pt, pt.size());
		ASSERT_TRUE(c.seal_pipe(feed.fd(), fd_sink(out), kVaddr + n * kPageSize, n, pt.size(), tags2).ok());
	}
	auto ct = file_bytes(out);
	ASSERT_EQ(ct.size(), 2 * pt.size());
	std::vector<uint8_t> second(ct.begin() + static_cast<ptrdiff_t>(pt.size()), ct.end());
	ct.resize(pt.size());
	ASSERT_TRUE(c.open(kVaddr, 0, ct, tags).ok());
	ASSERT_TRUE(c.open(kVaddr + n * kPageSize, n, second, tags2).ok());
	ASSERT_EQ(ct, pt);
	ASSERT_EQ(second, pt);
	close(out);
}

/* A child forked while the helpers live neither hangs nor crashes freeing the pool. */
TEST(Pages, SealPipePoolFreedInForkedChild)
{
	Ctx ctx = make_ctx(1);
	auto *pool = new PagePool(make_pool(ctx));
	int out = memfd_create("pages", MFD_CLOEXEC);
	ASSERT_GE(out, 0);
	auto pt = pattern(64 * kPageSize, 5);
	std::vector<uint8_t> tags(64 * kPageTagLen);
	{
		PipeFeeder feed(pt, pt.size());
		ASSERT_TRUE(pool->seal_pipe(feed.fd(), fd_sink(out), kVaddr, 0, pt.size(), tags).ok());
	}
	pid_t pid = fork();
	ASSERT_GE(pid, 0);
	if (pid == 0) {
		delete pool;
		_exit(0);
	}
	int status = 0;
	ASSERT_EQ(waitpid(pid, &status, 0), pid);
	ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	delete pool;
	close(out);
}

namespace {

struct FailingSink {
	size_t calls = 0, bytes = 0, fail_at = 0;
};

int failing_sink(void *arg, const void *, size_t n)
{
	auto *f = static_cast<FailingSink *>(arg);
	if (++f->calls >= f->fail_at) {
		errno = ENOSPC;
		return -1;
	}
	f->bytes += n;
	return 0;
}

} /* namespace */

/* Through the C API: a sink that fails fails the call with its errno. */
TEST(Pages, SealPipeSinkFailureThroughCApi)
{
	criusec_ctx *ctx = criusec::test::make_ctx(AeadAlg::Aes256Gcm, 65536);
	ASSERT_NE(ctx, nullptr);
	criusec_pages *p = criusec_pages_new(ctx, "pages-1.img");
	ASSERT_NE(p, nullptr);
	const size_t n = 64 * 40;
	auto pt = pattern(n * kPageSize, 9);
	std::vector<uint8_t> tags(n * kPageTagLen);
	for (size_t fail_at : {1, 2, 5}) {
		PipeFeeder feed(pt, pt.size());
		FailingSink f{0, 0, fail_at};
		int rc = criusec_pages_seal_pipe(p, feed.fd(), kVaddr, 0, pt.size(), tags.data(), failing_sink, &f);
		ASSERT_EQ(rc, -ENOSPC);
		ASSERT_NE(std::string(criusec_last_error()).find("can't write pages"), std::string::npos);
		ASSERT_EQ(f.calls, fail_at);
	}
	FailingSink ok{0, 0, SIZE_MAX};
	PipeFeeder feed(pt, pt.size());
	ASSERT_EQ(criusec_pages_seal_pipe(p, feed.fd(), kVaddr, 0, pt.size(), tags.data(), failing_sink, &ok), 0);
	ASSERT_EQ(ok.bytes, pt.size());
	criusec_pages_free(p);
	criusec_ctx_free(ctx);
}

/* The pool's threads follow the CPUs the process may use (a child held to one CPU gets one). */
TEST(PageWorkers, FollowTheAffinityMask)
{
	cpu_set_t all;
	ASSERT_EQ(sched_getaffinity(0, sizeof(all), &all), 0);
	size_t n = count_page_workers();
	EXPECT_GE(n, 1u);
	EXPECT_LE(n, std::min<size_t>(16, static_cast<size_t>(CPU_COUNT(&all))));
	pid_t pid = fork();
	ASSERT_GE(pid, 0);
	if (pid == 0) {
		cpu_set_t one;
		CPU_ZERO(&one);
		for (int c = 0; c < CPU_SETSIZE; c++)
			if (CPU_ISSET(c, &all)) {
				CPU_SET(c, &one);
				break;
			}
		_exit(sched_setaffinity(0, sizeof(one), &one) == 0 && count_page_workers() == 1 ? 0 : 1);
	}
	int status = 0;
	ASSERT_EQ(waitpid(pid, &status, 0), pid);
	EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	EXPECT_EQ(criusec_page_workers(), page_workers());
}
