/*
 * The page index: what a page image's pagetags image holds, read back at
 * restore.  A checkpoint that does not compress keeps one tag per page; one
 * that compresses keeps a record per region (u32 pages, u32 stored, then an
 * XTS region's tags), from which each region's place in the file follows.
 * The dump writes it in the pipeline (page_pipeline.cpp, add_record).
 */
#pragma once

#include <cstddef>
#include <cstdint>
#include <limits>
#include <mutex>

#include "page_cipher.h"
#include "secure_bytes.h"

namespace criusec {

/* One region of a page image of a compressing checkpoint, as its record says. */
struct PageRegion {
	uint64_t first = 0;  /* number of its first page in the image */
	uint32_t nr = 0;     /* pages */
	uint32_t stored = 0; /* 0: XTS pages, nr * 4096 bytes; else the sealed compressed bytes */
	uint64_t offset = 0; /* in the file */
	size_t tags = 0;     /* XTS: its first tag in the pool's tags */
	uint64_t size() const noexcept { return stored ? stored : uint64_t(nr) * kPageSize; }
};

/* The last region lazy pages decompressed, for the next pages they ask of it. */
struct RegionCache {
	std::mutex mu;
	uint64_t r = std::numeric_limits<uint64_t>::max();
	uint64_t vaddr = 0;
	SecureBytes pages;
};

} /* namespace criusec */
