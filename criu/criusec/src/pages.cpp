#include "pages.h"

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <sched.h>
#include <sys/mman.h>
#include <unistd.h>

#include "page_pipeline.h"
#include "secure_bytes.h"

namespace criusec {

namespace {

/* Below this a thread costs more than it saves. */
constexpr size_t kMinPagesPerWorker = 128;
/* A piece read, checked and decrypted while it is still in cache. */
constexpr size_t kReadPiecePages = 64;
/* However many CPUs there are: past this the pipe and the disk are the limit. */
constexpr size_t kMaxWorkers = 16;

/* The quota of one cgroup directory in whole CPUs (rounded up), 0 for none. */
size_t dir_quota(const std::string &dir, bool v2) noexcept
{
	unsigned long long quota = 0, period = 0;
	if (v2) {
		FILE *m = std::fopen((dir + "/cpu.max").c_str(), "re");
		if (!m)
			return 0;
		char q[32] = "";
		bool ok = std::fscanf(m, "%31s %llu", q, &period) == 2 && std::strcmp(q, "max");
		std::fclose(m);
		if (!ok)
			return 0;
		quota = std::strtoull(q, nullptr, 10);
	} else {
		auto num = [&](const char *file, long long &v) {
			FILE *f = std::fopen((dir + file).c_str(), "re");
			bool ok = f && std::fscanf(f, "%lld", &v) == 1;
			if (f)
				std::fclose(f);
			return ok;
		};
		long long q = -1, p = 0;
		if (!num("/cpu.cfs_quota_us", q) || !num("/cpu.cfs_period_us", p) || q <= 0 || p <= 0)
			return 0;
		quota = static_cast<unsigned long long>(q);
		period = static_cast<unsigned long long>(p);
	}
	if (!period || !quota)
		return 0;
	return static_cast<size_t>(std::max(1ULL, (quota + period - 1) / period));
}

/*
 * Whole CPUs in criu's cgroup CPU quota, the tightest from its cgroup up to
 * the root: cgroup v2's cpu.max, or v1's cpu controller (cfs_quota_us);
 * 0 where none is set.
 */
size_t cgroup_cpus() noexcept
{
	try {
		struct Where {
			std::string mount, path; /* path: "" or "/a/b" */
			bool v2;
		};
		std::vector<Where> dirs;
		FILE *f = std::fopen("/proc/self/cgroup", "re");
		if (!f)
			return 0;
		char line[4096];
		while (std::fgets(line, sizeof(line), f)) {
			line[std::strcspn(line, "\n")] = '\0';
			/* hierarchy-ID:controller-list:path */
			char *c1 = std::strchr(line, ':'), *c2 = c1 ? std::strchr(c1 + 1, ':') : nullptr;
			if (!c2)
				continue;
			std::string ctrls(c1 + 1, c2), path(c2 + 1);
			if (path == "/")
				path.clear();
			if (ctrls.empty()) {
				dirs.push_back({"/sys/fs/cgroup", path, true});
				dirs.push_back({"/sys/fs/cgroup/unified", path, true});
			}
			for (size_t at = 0; at < ctrls.size();) {
				size_t comma = std::min(ctrls.find(',', at), ctrls.size());
				if (ctrls.compare(at, comma - at, "cpu") == 0) {
					dirs.push_back({"/sys/fs/cgroup/cpu", path, false});
					dirs.push_back({"/sys/fs/cgroup/cpu,cpuacct", path, false});
				}
				at = comma + 1;
			}
		}
		std::fclose(f);
		size_t best = 0;
		for (auto &w : dirs)
			for (std::string p = w.path;; p.resize(p.rfind('/'))) {
				size_t n = dir_quota(w.mount + p, w.v2);
				if (n)
					best = best ? std::min(best, n) : n;
				if (p.empty())
					break;
			}
		return best;
	} catch (...) {
		return 0;
	}
}

} /* namespace */

/*
 * Workers for a pool: the CPUs criu may run on (its affinity mask), fewer
 * under a cgroup CPU quota.  Read once: the answer does not change during
 * a dump, and every page image asks.
 */
size_t page_workers() noexcept
{
	static const size_t n = count_page_workers();
	return n;
}

size_t count_page_workers() noexcept
{
	cpu_set_t set;
	size_t cpus = 0;
	if (!sched_getaffinity(0, sizeof(set), &set))
		cpus = static_cast<size_t>(CPU_COUNT(&set));
	if (!cpus)
		cpus = std::max(1u, std::thread::hardware_concurrency());
	size_t quota = cgroup_cpus();
	if (quota)
		cpus = std::min(cpus, quota);
	return std::clamp<size_t>(cpus, 1, kMaxWorkers);
}

PagePool::PagePool(std::vector<PageCipher> w) noexcept : workers_(std::move(w)) {}
PagePool::PagePool(PagePool &&o) noexcept = default;

PagePool &PagePool::operator=(PagePool &&o) noexcept
{
	if (this != &o) {
		drop_ring(); /* before the ciphers its helpers use */
		workers_ = std::move(o.workers_);
		ring_ = std::move(o.ring_);
		regions_on_ = o.regions_on_;
		fixed_ = o.fixed_;
		behind_ = o.behind_;
		pages_ = o.pages_;
		nregions_ = o.nregions_;
		tags_ = std::move(o.tags_);
		regions_ = std::move(o.regions_);
		file_size_ = o.file_size_;
		punched_ = std::move(o.punched_);
		cache_ = std::move(o.cache_);
	}
	return *this;
}

PagePool::~PagePool()
{
	drop_ring();
}

void PagePool::drop_ring() noexcept
{
	if (ring_ && ring_->forked()) {
		/* Its helpers are the parent's: nothing to join here. */
		(void)ring_.release();
	}
	ring_.reset();
}

Result<PagePool> PagePool::create(const Ctx &ctx, std::string_view image_name)
{
	std::vector<PageCipher> w;
	size_t n = page_workers();
	w.reserve(n);
	for (size_t i = 0; i < n; i++) {
		auto c = PageCipher::create(ctx, image_name);
		if (!c.ok())
			return std::move(c).status();
		w.push_back(std::move(c).value());
	}
	PagePool pool(std::move(w));
	pool.regions_on_ = ctx.compress() != CompressAlg::None;
	return pool;
}

/* Run f(worker, first unit, units) over nr units (pages by default), in parallel when that pays. */
template <typename F> Status PagePool::split(size_t nr_pages, F &&f, size_t min_per_worker)
{
	if (!min_per_worker)
		min_per_worker = kMinPagesPerWorker;
	size_t n = std::min(workers_.size(), std::max<size_t>(1, nr_pages / min_per_worker));
	if (n <= 1)
		return f(workers_[0], size_t{0}, nr_pages);
	std::vector<Status> st(n);
	std::vector<std::thread> threads;
	size_t per = (nr_pages + n - 1) / n;
	try {
		for (size_t w = 1; w < n; w++) {
			size_t first = std::min(nr_pages, w * per), count = std::min(per, nr_pages - first);
			threads.emplace_back([&, w, first, count] { st[w] = f(workers_[w], first, count); });
		}
	} catch (...) {
		/* No thread to be had: the ones not started run here. */
		for (size_t w = threads.size() + 1; w < n; w++) {
			size_t first = std::min(nr_pages, w * per), count = std::min(per, nr_pages - first);
			st[w] = f(workers_[w], first, count);
		}
	}
	st[0] = f(workers_[0], size_t{0}, std::min(per, nr_pages));
	for (auto &t : threads)
		t.join();
	for (auto &s : st)
		if (!s.ok())
			return std::move(s);
	return {};
}

Status PagePool::seal(uint64_t vaddr, uint64_t index, std::span<uint8_t> pages, std::span<uint8_t> tags)
{
	CRIUSEC_TRY(check_pages(pages, tags));
	return split(pages.size() / kPageSize, [&](PageCipher &c, size_t first, size_t count) {
		return c.seal(vaddr + first * kPageSize, index + first, pages.subspan(first * kPageSize, count * kPageSize),
			      tags.subspan(first * kPageTagLen, count * kPageTagLen));
	});
}

Status PagePool::open(uint64_t vaddr, uint64_t index, std::span<uint8_t> pages, std::span<const uint8_t> tags)
{
	CRIUSEC_TRY(check_pages(pages, tags));
	Status s = split(pages.size() / kPageSize, [&](PageCipher &c, size_t first, size_t count) {
		return c.open(vaddr + first * kPageSize, index + first, pages.subspan(first * kPageSize, count * kPageSize),
			      tags.subspan(first * kPageTagLen, count * kPageTagLen));
	});
	if (!s.ok())
		gnutls_memset(pages.data(), 0, pages.size());
	return s;
}

namespace {

Status pread_all(int fd, std::span<uint8_t> buf, uint64_t off, const std::string &what)
{
	for (size_t got = 0; got < buf.size();) {
		ssize_t r = ::pread(fd, buf.data() + got, buf.size() - got, static_cast<off_t>(off + got));
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return Status::error(errno, "can't read pages");
		if (r == 0)
			return bad_data("pages cut short at " + what);
		got += static_cast<size_t>(r);
	}
	return {};
}

} /* namespace */

Status PagePool::pread(int fd, uint64_t vaddr, uint64_t index, std::span<uint8_t> pages, std::span<const uint8_t> tags)
{
	CRIUSEC_TRY(check_pages(pages, tags));
	Status s = split(pages.size() / kPageSize, [&](PageCipher &c, size_t first, size_t count) -> Status {
		for (size_t done = 0; done < count;) {
			size_t n = std::min(kReadPiecePages, count - done), p = first + done;
			auto piece = pages.subspan(p * kPageSize, n * kPageSize);
			CRIUSEC_TRY(pread_all(fd, piece, (index + p) * kPageSize,
					      page_name(vaddr + p * kPageSize, index + p)));
			CRIUSEC_TRY(c.open(vaddr + p * kPageSize, index + p, piece,
					   tags.subspan(p * kPageTagLen, n * kPageTagLen)));
			done += n;
		}
		return {};
	});
	if (!s.ok())
		gnutls_memset(pages.data(), 0, pages.size());
	return s;
}

Status PagePool::seal_pipe(int in, const Sink &out, uint64_t vaddr, uint64_t index, size_t len, std::span<uint8_t> tags)
{
	if (len % kPageSize)
		return invalid_argument("page data must be whole 4096-byte pages");
	if (tags.size() != len / kPageSize * kPageTagLen)
		return invalid_argument("one 16-byte tag per page");
	if (regions_on_)
		return invalid_argument("a compressing checkpoint's pages are appended (append_pipe)");
	if (behind_)
		return invalid_argument("a pool that writes behind appends its pages (append_pipe)");
	if (!ring_)
		ring_ = std::make_unique<SealRing>(std::span<PageCipher>(workers_).subspan(1));
	ring_->set_sink(out, false);
	SealRing::Run r{in, vaddr, index, 0, len, false, false, tags.data()};
	return ring_->run(workers_[0], r);
}

Status PagePool::append_pipe(int in, const Sink &out, uint64_t vaddr, size_t len, SinkKey key)
{
	if (len % kPageSize)
		return invalid_argument("page data must be whole 4096-byte pages");
	size_t n = len / kPageSize;
	if (!ring_)
		ring_ = std::make_unique<SealRing>(std::span<PageCipher>(workers_).subspan(1));
	ring_->set_sink(out, behind_, key);
	SealRing::Run r{in, vaddr, pages_, nregions_, len, regions_on_, regions_on_ && !fixed_, nullptr};
	CRIUSEC_TRY(ring_->run(workers_[0], r));
	pages_ += n;
	nregions_ += (n + kRegionPages - 1) / kRegionPages;
	return {};
}

Status PagePool::flush()
{
	return ring_ ? ring_->flush() : Status{};
}

const std::vector<uint8_t> &PagePool::index() const noexcept
{
	static const std::vector<uint8_t> none;
	return ring_ ? ring_->records() : none;
}


/* Pages [from, from + out / 4096) of region rnum, whose first page is at vaddr. */
Status PagePool::read_region(PageCipher &c, int fd, const PageRegion &rg, uint64_t rnum, uint64_t vaddr, uint64_t from,
			     std::span<uint8_t> out)
{
	size_t n = out.size() / kPageSize;
	if (!rg.stored) {
		CRIUSEC_TRY(pread_all(fd, out, rg.offset + from * kPageSize,
				      page_name(vaddr + from * kPageSize, rg.first + from)));
		return c.open(vaddr + from * kPageSize, rg.first + from, out,
			      std::span<const uint8_t>(tags_).subspan((rg.tags + from) * kPageTagLen, n * kPageTagLen));
	}
	/* Not zeroed first: it only ever holds what the file had. */
	if (!c.stored_)
		c.stored_.reset(new uint8_t[kMaxCompressBlock]);
	std::span<uint8_t> stored(c.stored_.get(), rg.stored);
	CRIUSEC_TRY(pread_all(fd, stored, rg.offset, region_name(rnum, vaddr, rg.first, rg.nr)));
	if (n == rg.nr)
		return c.open_region(rnum, vaddr, rg.first, stored, out);
	/* Part of a region: through the cache, keyed by the address it was authenticated for. */
	std::lock_guard<std::mutex> lk(cache_->mu);
	if (cache_->r != rnum || cache_->vaddr != vaddr) {
		cache_->r = std::numeric_limits<uint64_t>::max();
		if (cache_->pages.size() != kMaxCompressBlock)
			cache_->pages = SecureBytes(kMaxCompressBlock);
		CRIUSEC_TRY(c.open_region(rnum, vaddr, rg.first, stored, cache_->pages.span().first(rg.nr * kPageSize)));
		cache_->r = rnum;
		cache_->vaddr = vaddr;
	}
	std::memcpy(out.data(), cache_->pages.data() + from * kPageSize, out.size());
	return {};
}

namespace {

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

/*
 * Restore decompresses into fresh memory (the restored task's, premapped):
 * a fault per page taken inside the decompressor costs more than the
 * kernel populating the range in one call, on the same worker.  A failure
 * (an old kernel) only leaves the faults to the decompressor.
 */
void prefault(std::span<uint8_t> out) noexcept
{
	if (!out.empty())
		(void)madvise(out.data(), out.size(), MADV_POPULATE_WRITE);
}

} /* namespace */

Status PagePool::read(int fd, uint64_t vaddr, uint64_t first, std::span<uint8_t> pages)
{
	if (pages.size() % kPageSize)
		return invalid_argument("page data must be whole 4096-byte pages");
	uint64_t n = pages.size() / kPageSize;
	if (first > pages_ || n > pages_ - first)
		return bad_data("pages " + std::to_string(first) + "-" + std::to_string(first + n) +
				" are outside what was dumped (" + std::to_string(pages_) + " pages)");
	if (!regions_on_) {
		return pread(fd, vaddr, first, pages,
			     std::span<const uint8_t>(tags_).subspan(first * kPageTagLen, n * kPageTagLen));
	}
	if (n == 0)
		return {};
	/* The regions the pages span, each read by one worker. */
	auto it = std::upper_bound(regions_.begin(), regions_.end(), first,
				   [](uint64_t f, const PageRegion &rg) { return f < rg.first; });
	size_t r0 = static_cast<size_t>(it - regions_.begin()) - 1, r1 = r0;
	while (r1 < regions_.size() && regions_[r1].first < first + n)
		r1++;
	/*
	 * Half the workers take regions from the front of the call, half from
	 * the back, each the next one not taken yet (the call ends when the
	 * last region does, and regions cost unequal time: fresh memory, what
	 * compresses).  Not every worker the next region: the kernel locks a
	 * page table (2 MiB of pages) while it populates, and two workers in
	 * one table wait for each other.  From opposite ends they meet once.
	 */
	std::mutex mu;
	size_t front = r0, back = r1;
	std::atomic<size_t> nth{0};
	Status s = split(
		r1 - r0,
		[&](PageCipher &c, size_t, size_t) -> Status {
			bool from_back = nth.fetch_add(1, std::memory_order_relaxed) % 2;
			for (;;) {
				size_t k;
				{
					std::lock_guard<std::mutex> lk(mu);
					if (front == back)
						return {};
					k = from_back ? --back : front++;
				}
				const PageRegion &rg = regions_[k];
				uint64_t lo = std::max(first, rg.first), hi = std::min(first + n, rg.first + rg.nr);
				auto out = pages.subspan((lo - first) * kPageSize, (hi - lo) * kPageSize);
				prefault(out);
				/* The caller's address for page first gives the region's. */
				uint64_t rv = vaddr + (rg.first - first) * kPageSize;
				Status st = read_region(c, fd, rg, k, rv, lo - rg.first, out);
				if (!st.ok()) {
					std::lock_guard<std::mutex> lk(mu);
					front = back;
					return st;
				}
			}
		},
		2);
	if (!s.ok())
		gnutls_memset(pages.data(), 0, pages.size());
	return s;
}

} /* namespace criusec */
