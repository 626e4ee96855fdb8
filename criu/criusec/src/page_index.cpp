#include "pages.h"

#include <algorithm>
#include <memory>
#include <mutex>
#include <string>

namespace criusec {

Result<PagePool::Extent> PagePool::index_extent(const Ctx &ctx, std::span<const uint8_t> index)
{
	PagePool pool(std::vector<PageCipher>{});
	pool.regions_on_ = ctx.compress() != CompressAlg::None;
	CRIUSEC_TRY(pool.parse(index, false));
	return Extent{pool.pages_, pool.file_bytes()};
}

uint64_t PagePool::file_bytes() const noexcept
{
	if (!regions_on_)
		return pages_ * kPageSize;
	return regions_.empty() ? 0 : regions_.back().offset + regions_.back().size();
}

Status PagePool::check_file(const Ctx &ctx, std::span<const uint8_t> index, uint64_t file_size)
{
	auto e = index_extent(ctx, index);
	if (!e.ok())
		return std::move(e).status();
	return check_size(e.value(), file_size);
}

Status PagePool::check_size(const Extent &e, uint64_t file_size)
{
	/* Dedup punches holes but keeps the size: any other size is damage. */
	if (file_size != e.bytes)
		return bad_data(std::to_string(file_size) + " bytes, but the dump wrote " + std::to_string(e.bytes) +
				" (" + std::to_string(e.pages) + " pages): truncated or extended");
	return {};
}

Status PagePool::attach(std::span<const uint8_t> index, uint64_t file_size)
{
	CRIUSEC_TRY(parse(index));
	file_size_ = file_size;
	return check_size(Extent{pages_, file_bytes()}, file_size);
}

Status PagePool::parse(std::span<const uint8_t> index, bool keep_tags)
{
	tags_.clear();
	regions_.clear();
	punched_.clear();
	cache_.reset();
	pages_ = 0;
	if (!regions_on_) {
		if (index.size() % kPageTagLen)
			return bad_data("page tags of " + std::to_string(index.size()) + " bytes: not whole tags");
		if (keep_tags)
			tags_.assign(index.begin(), index.end());
		pages_ = index.size() / kPageTagLen;
	} else {
		uint64_t offset = 0;
		/* The tags are at most the index: one allocation, not a growing copy (4 MiB for 1 GiB of XTS regions). */
		if (keep_tags)
			tags_.reserve(index.size());
		regions_.reserve(index.size() / (kRegionRecordLen + kRegionPages * kPageTagLen) + 1);
		for (size_t pos = 0; pos < index.size();) {
			auto what = [&] { return "region record " + std::to_string(regions_.size()); };
			if (index.size() - pos < kRegionRecordLen)
				return bad_data(what() + " cut short");
			auto u32 = [&](size_t at) {
				return uint32_t(index[at]) << 24 | uint32_t(index[at + 1]) << 16 | uint32_t(index[at + 2]) << 8 |
				       index[at + 3];
			};
			PageRegion rg;
			rg.first = pages_;
			rg.nr = u32(pos);
			rg.stored = u32(pos + 4);
			rg.offset = offset;
			pos += kRegionRecordLen;
			if (rg.nr == 0 || rg.nr > kMaxRegionPages)
				return bad_data(what() + ": " + std::to_string(rg.nr) + " pages");
			if (rg.stored && (rg.stored <= kAeadTagLen || rg.stored >= uint64_t(rg.nr) * kPageSize))
				return bad_data(what() + ": stored length " + std::to_string(rg.stored) + " for " +
						std::to_string(rg.nr) + " pages");
			if (!rg.stored) {
				size_t t = size_t(rg.nr) * kPageTagLen;
				if (index.size() - pos < t)
					return bad_data(what() + ": tags cut short");
				rg.tags = tags_.size() / kPageTagLen;
				if (keep_tags)
					tags_.insert(tags_.end(), index.begin() + pos, index.begin() + pos + t);
				pos += t;
			}
			offset += rg.size();
			pages_ += rg.nr;
			regions_.push_back(rg);
		}
		if (!regions_.empty())
			cache_ = std::make_unique<RegionCache>();
	}
	return {};
}

Status PagePool::punch(uint64_t first, uint64_t nr, const Hole &hole)
{
	if (first > pages_ || nr > pages_ - first)
		return bad_data("pages to punch are outside what was dumped");
	if (nr == 0)
		return {};
	if (!regions_on_)
		return hole(first * kPageSize, nr * kPageSize);
	if (cache_) { /* what is punched reads as punched */
		std::lock_guard<std::mutex> lk(cache_->mu);
		cache_->r = std::numeric_limits<uint64_t>::max();
	}
	if (punched_.empty())
		punched_.assign(pages_, 0);
	auto it = std::upper_bound(regions_.begin(), regions_.end(), first,
				   [](uint64_t f, const PageRegion &rg) { return f < rg.first; });
	for (size_t k = static_cast<size_t>(it - regions_.begin()) - 1;
	     k < regions_.size() && regions_[k].first < first + nr; k++) {
		const PageRegion &rg = regions_[k];
		uint64_t lo = std::max(first, rg.first), hi = std::min(first + nr, rg.first + rg.nr);
		if (!rg.stored) {
			CRIUSEC_TRY(hole(rg.offset + (lo - rg.first) * kPageSize, (hi - lo) * kPageSize));
			continue;
		}
		/* A compressed region goes whole, once none of its pages is needed. */
		std::fill(punched_.begin() + lo, punched_.begin() + hi, 1);
		if (std::all_of(punched_.begin() + rg.first, punched_.begin() + rg.first + rg.nr,
				[](uint8_t b) { return b; }))
			CRIUSEC_TRY(hole(rg.offset, rg.stored));
	}
	return {};
}

} /* namespace criusec */
