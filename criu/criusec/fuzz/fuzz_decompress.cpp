/*
 * libFuzzer target: the decompression paths, fed what a key holder could
 * write, so the bytes authenticate and reach the decompressor:
 *   byte 0: bit 0 the algorithm (LZ4, zstd), bits 1-2 the region's pages - 1;
 *   the rest: a compressed block as is, then the same bytes sealed as a
 *   page region and as the content of a compressed stream, both opened.
 * The decompressor must never write past its bound (guard bytes, ASan)
 * and every result must be exactly the size promised, or a clean error.
 */
#include <cstdlib>
#include <cstring>
#include <vector>

#include "compress.h"
#include "ctx.h"
#include "fuzz_common.h"
#include "pages.h"
#include "stream.h"

using namespace criusec;

namespace {

struct Fixture {
	std::optional<Ctx> ctx[2];
	std::optional<PageCipher> pages[2];
	std::optional<BlockCodec> codec[2];
};

Fixture *g;

Ctx compressing(CompressAlg alg)
{
	std::vector<uint8_t> mk(32, 0x5a);
	Id id;
	id.fill(0x42);
	auto c = Ctx::from_master_key(mk, id, AeadAlg::Aes256Gcm, 4096);
	if (!c.ok() || !c.value().set_compress(alg).ok())
		abort();
	return std::move(c).value();
}

constexpr uint8_t kGuard = 0xa5;

} /* namespace */

extern "C" int LLVMFuzzerInitialize(int *, char ***)
{
	g = new Fixture;
	for (int i = 0; i < 2; i++) {
		CompressAlg alg = i ? CompressAlg::Zstd : CompressAlg::Lz4;
		g->ctx[i].emplace(compressing(alg));
		auto p = PageCipher::create(*g->ctx[i], "pages-1.img");
		auto c = BlockCodec::create(alg);
		if (!p.ok() || !c.ok())
			abort();
		g->pages[i].emplace(std::move(p).value());
		g->codec[i].emplace(std::move(c).value());
	}
	return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 2 || size > 64 * 1024)
		return 0;
	int a = data[0] & 1;
	size_t nr = 1 + ((data[0] >> 1) & 3);
	std::span<const uint8_t> payload(data + 1, size - 1);

	/* 1. The block as is, both bounds. */
	std::vector<uint8_t> out(nr * kPageSize + 64, kGuard);
	auto d = g->codec[a]->decompress(payload, std::span(out).first(nr * kPageSize), false);
	if (d.ok() && (d.value() == 0 || d.value() > nr * kPageSize))
		abort();
	for (size_t k = nr * kPageSize; k < out.size(); k++)
		if (out[k] != kGuard)
			abort();

	/* 2. Sealed as region 3 at some address: authentic, then decompressed exactly or refused. */
	std::vector<uint8_t> stored(payload.size() + kAeadTagLen);
	if (!g->pages[a]->seal_raw_region_for_testing(3, 0x7f0000000000, 64, nr, payload, stored).ok())
		abort();
	std::fill(out.begin(), out.end(), kGuard);
	Status s = g->pages[a]->open_region(3, 0x7f0000000000, 64, stored, std::span(out).first(nr * kPageSize));
	for (size_t k = nr * kPageSize; k < out.size(); k++)
		if (out[k] != kGuard)
			abort();
	if (!s.ok()) {
		for (size_t k = 0; k < nr * kPageSize; k++)
			if (out[k]) /* refused: no plaintext left behind */
				abort();
		if (s.message().empty())
			abort();
	}

	/* 3. The content of a compressed stream: sealed chunk by chunk, then opened. */
	auto sealer = StreamSealer::start(*g->ctx[a], "core", "core-1.img");
	if (!sealer.ok())
		abort();
	std::vector<uint8_t> st(sealer.value().header().begin(), sealer.value().header().end());
	for (size_t pos = 0;;) {
		size_t n = std::min<size_t>(4096, payload.size() - pos);
		bool last = pos + n == payload.size();
		std::vector<uint8_t> c(n + kAeadTagLen);
		if (!sealer.value().seal_chunk(payload.subspan(pos, n), last, c).ok())
			abort();
		st.insert(st.end(), c.begin(), c.end());
		pos += n;
		if (last)
			break;
	}
	size_t total = 0;
	Emit count = [&](std::span<const uint8_t> b) -> Status {
		if (b.size() > kStreamBlock)
			abort();
		total += b.size();
		return {};
	};
	Status so = open_stream(*g->ctx[a], "core", "core-1.img", st, count);
	if (!so.ok() && so.message().empty())
		abort();
	return 0;
}
