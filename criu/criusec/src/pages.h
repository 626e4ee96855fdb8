/*
 * The page cipher: every 4 KiB page of a page image encrypted on its own
 * with AES-256-XTS, in place and length-preserving, so pages stay at their
 * pagemap offsets and can be read at random (lazy pages, page server,
 * dedup).  XTS is malleable, so each page also gets a 16-byte GMAC tag,
 * kept by the caller in an authenticated stream image.
 *
 * Keys are per page image (HKDF from the checkpoint key and the image's
 * name); a page's identity is its virtual address v and its number i in
 * the image (offset / 4096):
 *   ciphertext = AES-256-XTS(xts_key, tweak = LE64(v) || LE64(i), page)
 *   tag = GMAC(tag_key, nonce = LE64(i) || 0^4, LE64(v) || LE64(i) || ciphertext)
 * i is unique within an image, so no GMAC nonce is ever reused under a key.
 *
 * A checkpoint that compresses (format 11) cuts the pages of an image into
 * regions of consecutive pages at consecutive addresses; a region that
 * shrinks is compressed and sealed with the stream AEAD as one (the nonce
 * its number in the image, the AAD its address, first page, page count,
 * algorithm, image and checkpoint), the others stay XTS pages as above.
 * The pagetags image then holds one record per region, so that pages can
 * still be read at random by their number in the image (a region at a
 * time).
 */
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "aead.h"
#include "compress.h"
#include "ctx.h"
#include "gnutls_raii.h"
#include "status.h"
#include "xts.h"

namespace criusec {

inline constexpr std::string_view kInfoPagesTag = "criusec v1 pages tag";
inline constexpr std::string_view kInfoPagesRegion = "criusec v1 pages region";
constexpr size_t kPageSize = 4096;
constexpr size_t kPageTagLen = 16;
/* What the writer puts in one region, and the most a reader accepts. */
constexpr size_t kRegionPages = 64;
constexpr size_t kMaxRegionPages = kMaxCompressBlock / kPageSize;
constexpr size_t kRegionRecordLen = 8; /* u32 pages, u32 stored (then the tags of an XTS region) */

class PageCipher {
public:
	[[nodiscard]] static Result<PageCipher> create(const Ctx &ctx, std::string_view image_name);

	/*
	 * Encrypt pages.size() / kPageSize pages in place, the first at vaddr
	 * and number index, the next ones following; one tag each into tags.
	 */
	[[nodiscard]] Status seal(uint64_t vaddr, uint64_t index, std::span<uint8_t> pages, std::span<uint8_t> tags);
	/*
	 * Check every tag, then decrypt in place.  On failure nothing is
	 * decrypted and the pages are zeroed; the message names the page.
	 */
	[[nodiscard]] Status open(uint64_t vaddr, uint64_t index, std::span<uint8_t> pages,
				  std::span<const uint8_t> tags);

	/* Compressing checkpoints only (has_regions()). */
	bool has_regions() const noexcept { return region_.has_value(); }
	/*
	 * Region number r, pages at vaddr and page number first: compress
	 * and seal into out; the stored length, or 0 when it does not shrink
	 * below out.size() (then it is to be sealed page by page).
	 */
	[[nodiscard]] Result<size_t> seal_region(uint64_t r, uint64_t vaddr, uint64_t first,
						 std::span<const uint8_t> pages, std::span<uint8_t> out);
	/*
	 * Open what seal_region() stored into pages (the region's whole
	 * plaintext): authenticated before anything is decompressed, and it
	 * must decompress to exactly pages.size().
	 */
	[[nodiscard]] Status open_region(uint64_t r, uint64_t vaddr, uint64_t first, std::span<const uint8_t> stored,
					 std::span<uint8_t> pages);
	/* Tests and fuzzers only: seal any bytes as a region's compressed data, as a key holder could. */
	[[nodiscard]] Status seal_raw_region_for_testing(uint64_t r, uint64_t vaddr, uint64_t first, size_t nr,
							 std::span<const uint8_t> compressed, std::span<uint8_t> out);

private:
	PageCipher(Xts xts, AeadHandle gmac) noexcept : xts_(std::move(xts)), gmac_(std::move(gmac)) {}
	[[nodiscard]] Status tag(uint64_t vaddr, uint64_t index, std::span<const uint8_t> page,
				 std::span<uint8_t, kPageTagLen> out);
	std::vector<uint8_t> region_aad(uint64_t vaddr, uint64_t first, size_t nr) const;
	Xts xts_;
	AeadHandle gmac_; /* AES-256-GCM, used with no plaintext: GMAC */
	/* Compressed regions: the stream AEAD under the image's region key. */
	std::optional<Aead> region_;
	std::optional<BlockCodec> codec_;
	Id id_{};
	std::string name_;
	SecureBytes scratch_; /* a region's compressed plaintext */
	std::unique_ptr<uint8_t[]> stored_; /* restore: a region as read (ciphertext), kMaxCompressBlock */
	friend class PagePool;
};

/* One region of a page image of a compressing checkpoint, as its record says. */
struct PageRegion {
	uint64_t first = 0;  /* number of its first page in the image */
	uint32_t nr = 0;     /* pages */
	uint32_t stored = 0; /* 0: XTS pages, nr * 4096 bytes; else the sealed compressed bytes */
	uint64_t offset = 0; /* in the file */
	size_t tags = 0;     /* XTS: its first tag in the pool's tags */
	uint64_t size() const noexcept { return stored ? stored : uint64_t(nr) * kPageSize; }
};

class SealRing;

/* Threads a pool works on: the CPUs criu may use (affinity mask, cgroup CPU quota), at least 1. */
size_t page_workers() noexcept;

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
	[[nodiscard]] Status append_pipe(int in, const Sink &out, uint64_t vaddr, size_t len);
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
	/* The pages an authenticated pagetags plaintext describes (for the pagemap's count). */
	[[nodiscard]] static Result<uint64_t> index_pages(const Ctx &ctx, std::span<const uint8_t> index);
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
	[[nodiscard]] Status parse(std::span<const uint8_t> index);
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
