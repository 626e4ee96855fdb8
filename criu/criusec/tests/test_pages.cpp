/* The page cipher: round trips, identity binding, and every tamper class. */
#include <gtest/gtest.h>

#include <algorithm>
#include <vector>

#include "ctx.h"
#include "pages.h"
#include "test_util.h"

using namespace criusec;
using criusec::test::pattern;

namespace {

Ctx make_ctx(uint8_t seed)
{
	std::vector<uint8_t> mk(32, seed);
	Id id;
	id.fill(static_cast<uint8_t>(seed + 1));
	auto c = Ctx::from_master_key(mk, id, std::nullopt, AeadAlg::Aes256Gcm, 65536);
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
