/*
 * criusec-bench-floor MIB [REPEAT]: the crypto floor of make bench, the
 * time the engine's page cipher alone needs to seal MIB of random pages
 * (AES-256-XTS and a GMAC tag per page) on the threads criu's dump uses,
 * from memory already faulted in.  Prints the median in milliseconds.
 */
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include <gnutls/crypto.h>

#include "ctx.h"
#include "pages.h"

using namespace criusec;

int main(int argc, char **argv)
{
	if (argc < 2) {
		std::fprintf(stderr, "usage: criusec-bench-floor MIB [REPEAT]\n");
		return 2;
	}
	size_t len = static_cast<size_t>(std::atol(argv[1])) << 20;
	int repeat = argc > 2 ? std::atoi(argv[2]) : 5;
	auto ctx = Ctx::create(default_aead());
	if (!ctx.ok())
		return 1;
	auto pool = PagePool::create(ctx.value(), "pages-1.img");
	if (!pool.ok())
		return 1;
	std::vector<uint8_t> pages(len), tags(len / kPageSize * kPageTagLen);
	if (gnutls_rnd(GNUTLS_RND_NONCE, pages.data(), pages.size()))
		return 1;
	std::vector<double> ms;
	for (int i = 0; i < repeat; i++) {
		auto t0 = std::chrono::steady_clock::now();
		if (!pool.value().seal(0x7f0000000000, 0, pages, tags).ok())
			return 1;
		ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
	}
	std::sort(ms.begin(), ms.end());
	std::printf("%.1f\n", ms[ms.size() / 2]);
	return 0;
}
