/*
 * The page pool: the page cipher (page_cipher.h) for one page image, one
 * per worker thread, with the dump's pipeline (page_pipeline.h) and the
 * restore's index (page_index.h) behind one interface, PagePool.
 */
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string_view>
#include <vector>

#include "ctx.h"
#include "page_cipher.h"
#include "page_index.h"
#include "status.h"

namespace criusec {

class SealRing;

/*
 * Threads a pool works on: the CPUs criu may use (its affinity mask, fewer
 * under a cgroup CPU quota, v2 or v1), 1 to 16.  page_workers() reads it
 * once for the process; count_page_workers() reads it now.
 */
size_t page_workers() noexcept;
size_t count_page_workers() noexcept;

/* Names a page sink (a C function and its argument): the same sink again is not set again. */
struct PageSinkKey {
	uintptr_t fn = 0;
	const void *arg = nullptr;
	bool set() const noexcept { return fn != 0; }
	bool operator==(const PageSinkKey &) const = default;
};

/*
 * Page ciphers for one image, one per worker: large runs are split between
 * short-lived threads (joined before returning), so that dump and restore
 * are not held to one core's speed.  Callers see one serial operation.
 */
class PagePool {
public:
	[[nodiscard]] static Result<PagePool> create(const Ctx &ctx, std::string_view image_name);
	PagePool(PagePool &&) noexcept;
	PagePool &operator=(PagePool &&) noexcept;
	~PagePool();

	[[nodiscard]] Status seal(uint64_t vaddr, uint64_t index, std::span<uint8_t> pages, std::span<uint8_t> tags);
	[[nodiscard]] Status open(uint64_t vaddr, uint64_t index, std::span<uint8_t> pages,
				  std::span<const uint8_t> tags);
	/*
	 * Read pages.size() bytes at page number index of the image fd, then
	 * check and decrypt them, a cache-sized piece at a time.  On failure
	 * the pages are zeroed.
	 */
	[[nodiscard]] Status pread(int fd, uint64_t vaddr, uint64_t index, std::span<uint8_t> pages,
				   std::span<const uint8_t> tags);
	/*
	 * Where seal_pipe() puts sealed pages, in order and all of them:
	 * called only on seal_pipe()'s calling thread.
	 */
	using Sink = std::function<Status(std::span<const uint8_t>)>;
	using SinkKey = PageSinkKey;
	/*
	 * Dump: read len bytes of pages from in (a pipe), seal them as seal()
	 * does (the first at vaddr and number index, one tag each into tags)
	 * and hand them to out.  The pages move in pieces through a ring
	 * shared with helper threads that live as long as the pool (started by
	 * its first run of more than one piece): while this thread writes
	 * sealed pieces, the helpers read and seal the next ones, and this
	 * thread seals too when they fall behind.  Every helper is idle again
	 * before this returns, on failure too; the pipe is then left part
	 * read.  Helpers block all signals.  A pool must not be used in a
	 * child forked while its helpers run (the child has no helpers); its
	 * destructor there joins nothing.
	 */
	[[nodiscard]] Status seal_pipe(int in, const Sink &out, uint64_t vaddr, uint64_t index, size_t len,
				       std::span<uint8_t> tags);

	/*
	 * A page image as a whole: the pool keeps what its pagetags image
	 * holds (the tags, or a compressing checkpoint's region records).
	 *
	 * Dump: append len bytes of pages from the pipe in (the first at
	 * vaddr), as seal_pipe() does, numbered after those already appended;
	 * a compressing checkpoint compresses the regions that shrink.
	 */
	[[nodiscard]] Status append_pipe(int in, const Sink &out, uint64_t vaddr, size_t len, SinkKey key = {});
	/* Pages leave through a page server, which counts them: never compress. */
	void keep_page_size() noexcept { fixed_ = true; }
	/*
	 * append_pipe() returns once its pages are read from the pipe; they
	 * are sealed and handed to the sink by the helpers (or the next
	 * append_pipe(), or flush()) in order, so the sink must work from
	 * any thread until flush().  For a local file, not for a socket whose
	 * protocol interleaves pages with other messages.
	 */
	void write_behind() noexcept { behind_ = true; }
	/* Every page appended is handed to the sink: the first error of any, or none. */
	[[nodiscard]] Status flush();
	/* The plaintext of the pagetags image for the pages appended (after flush()). */
	const std::vector<uint8_t> &index() const noexcept;
	/* Pages appended, or attached. */
	uint64_t pages() const noexcept { return pages_; }

	/*
	 * Restore: the authenticated plaintext of the pagetags image and the
	 * page image's size, which must be what they describe.
	 */
	[[nodiscard]] Status attach(std::span<const uint8_t> index, uint64_t file_size);
	/*
	 * What an authenticated pagetags plaintext describes: its pages (for
	 * the pagemap's count) and the size of the page image that fits it.
	 */
	struct Extent {
		uint64_t pages = 0, bytes = 0;
	};
	[[nodiscard]] static Result<Extent> index_extent(const Ctx &ctx, std::span<const uint8_t> index);
	/* attach()'s size check alone, without taking the tags (a dump's parent, opened while frozen). */
	[[nodiscard]] static Status check_file(const Ctx &ctx, std::span<const uint8_t> index, uint64_t file_size);
	/* Read, check and decrypt (and decompress) pages.size() bytes at page number first of fd. */
	[[nodiscard]] Status read(int fd, uint64_t vaddr, uint64_t first, std::span<uint8_t> pages);
	/*
	 * Dedup: the pages [first, first + nr) are no longer needed; hole(off,
	 * len) gets the byte ranges of the image that can go (a compressed
	 * region once every one of its pages went).  The caller punches them,
	 * now or once a restore succeeded.
	 */
	using Hole = std::function<Status(uint64_t off, uint64_t len)>;
	[[nodiscard]] Status punch(uint64_t first, uint64_t nr, const Hole &hole);
	const std::vector<PageRegion> &regions() const noexcept { return regions_; }

private:
	explicit PagePool(std::vector<PageCipher> w) noexcept;
	template <typename F> Status split(size_t nr_pages, F &&f, size_t min_per_worker = 0);
	void drop_ring() noexcept;
	/* keep_tags false: the regions and their sizes only (what index_extent() needs) */
	[[nodiscard]] Status parse(std::span<const uint8_t> index, bool keep_tags = true);
	uint64_t file_bytes() const noexcept;
	[[nodiscard]] static Status check_size(const Extent &e, uint64_t file_size);
	[[nodiscard]] Status read_region(PageCipher &c, int fd, const PageRegion &rg, uint64_t rnum, uint64_t vaddr,
					 uint64_t from, std::span<uint8_t> out);
	/* Element addresses survive moves of the vector: helpers keep pointers. */
	std::vector<PageCipher> workers_;
	std::unique_ptr<SealRing> ring_; /* made by the first seal_pipe() */
	bool regions_on_ = false;	 /* the checkpoint compresses: region records */
	bool fixed_ = false;
	bool behind_ = false;
	uint64_t pages_ = 0;
	uint64_t nregions_ = 0;
	std::vector<uint8_t> tags_;	 /* restore: the page tags */
	std::vector<PageRegion> regions_; /* restore, compressing checkpoints */
	uint64_t file_size_ = 0;
	std::vector<uint8_t> punched_; /* dedup: per page, of compressed regions */
	/* Lazy pages read a few pages at a time: the last region decompressed. */
	std::unique_ptr<struct RegionCache> cache_;
};

} /* namespace criusec */
