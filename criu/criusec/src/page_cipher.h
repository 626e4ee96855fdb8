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
#include "secure_bytes.h"
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

/* How errors name what failed: "page N (vaddr 0x...)", "region R (pages A-B, vaddr 0x...)". */
std::string page_name(uint64_t vaddr, uint64_t index);
std::string region_name(uint64_t r, uint64_t vaddr, uint64_t first, size_t nr);
/* Whole pages, one tag each. */
[[nodiscard]] Status check_pages(std::span<const uint8_t> pages, std::span<const uint8_t> tags);

} /* namespace criusec */
