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
#include "gnutls_raii.h"
#include "status.h"
#include "xts.h"

namespace criusec {

inline constexpr std::string_view kInfoPagesTag = "criusec v1 pages tag";
constexpr size_t kPageSize = 4096;
constexpr size_t kPageTagLen = 16;

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

private:
	PageCipher(Xts xts, AeadHandle gmac) noexcept : xts_(std::move(xts)), gmac_(std::move(gmac)) {}
	[[nodiscard]] Status tag(uint64_t vaddr, uint64_t index, std::span<const uint8_t> page,
				 std::span<uint8_t, kPageTagLen> out);
	Xts xts_;
	AeadHandle gmac_; /* AES-256-GCM, used with no plaintext: GMAC */
};

class SealRing;

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

private:
	explicit PagePool(std::vector<PageCipher> w) noexcept;
	template <typename F> Status split(size_t nr_pages, F &&f);
	void drop_ring() noexcept;
	/* Element addresses survive moves of the vector: helpers keep pointers. */
	std::vector<PageCipher> workers_;
	std::unique_ptr<SealRing> ring_; /* made by the first seal_pipe() */
};

} /* namespace criusec */
