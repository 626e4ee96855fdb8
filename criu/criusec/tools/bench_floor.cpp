/*
 * criusec-bench-floor MIB [REPEAT [ALG [FILE]]]: the floor of make bench.
 *
 * ALG none (the default): the time the engine's page cipher alone needs to
 * seal MIB of random pages (AES-256-XTS and a GMAC tag per page) on the
 * threads criu's dump uses, from memory already faulted in.
 *
 * ALG zstd, lz4 or pipe (no compression): the dump's whole page pipeline on
 * those threads, with no
 * CRIU around it: MIB of pages (random, or the first MIB of FILE, e.g. a
 * plain dump's pages-N.img) read from a memfd in CRIU's 4 MiB runs,
 * compressed where that shrinks them, sealed, and handed to a sink that
 * drops them.
 *
 * ALG zstd-restore, lz4-restore, pipe-restore: the restore side of the
 * same pipeline: those pages sealed once (into a memfd), then read back,
 * checked, decrypted and decompressed by the engine into fresh anonymous
 * memory in one call, as a restore reads a VMA into the restored task's
 * premapped memory.  ALG copy: a plain restore's part of it, the pages
 * read from a memfd into fresh memory in one pread().
 *
 * Prints the median in milliseconds.
 */
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <gnutls/crypto.h>

#include "ctx.h"
#include "io.h"
#include "pages.h"

using namespace criusec;

namespace {

constexpr uint64_t kVaddr = 0x7f0000000000;
constexpr size_t kRunLen = 4 << 20; /* CRIU's page pipes: 1024 pages */

bool fill(std::vector<uint8_t> &pages, const char *file)
{
	if (!file)
		return gnutls_rnd(GNUTLS_RND_NONCE, pages.data(), pages.size()) == 0;
	int fd = open(file, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return false;
	auto got = read_full(fd, pages);
	close(fd);
	if (!got.ok())
		return false;
	pages.resize(got.value() / kPageSize * kPageSize);
	return !pages.empty();
}

/* Fresh memory, as the restored task's premapped VMAs are. */
uint8_t *fresh(size_t len)
{
	void *p = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	return p == MAP_FAILED ? nullptr : static_cast<uint8_t *>(p);
}

/* The restore side (ALG ...-restore, copy): the median of repeat reads, in ms; < 0 on failure. */
double restore_floor(const Ctx &ctx, const std::vector<uint8_t> &pages, int mfd, const std::string &alg,
		     int repeat)
{
	size_t len = pages.size();
	std::vector<double> ms;
	std::vector<uint8_t> index;
	int out = -1;
	if (alg != "copy") {
		/* Sealed once, as a dump writes them */
		auto pool = PagePool::create(ctx, "pages-1.img");
		out = memfd_create("sealed", MFD_CLOEXEC);
		if (!pool.ok() || out < 0 || lseek(mfd, 0, SEEK_SET) != 0)
			return -1;
		auto sink = [out](std::span<const uint8_t> b) { return write_full(out, b); };
		for (size_t off = 0; off < len; off += kRunLen)
			if (!pool.value().append_pipe(mfd, sink, kVaddr + off, std::min(kRunLen, len - off)).ok())
				return -1;
		if (!pool.value().flush().ok())
			return -1;
		index = pool.value().index();
	}
	for (int i = 0; i < repeat; i++) {
		uint8_t *mem = fresh(len);
		if (!mem)
			return -1;
		auto pool = PagePool::create(ctx, "pages-1.img");
		struct stat st;
		if (!pool.ok() || (out >= 0 && (fstat(out, &st) || !pool.value().attach(index, st.st_size).ok())))
			return -1;
		/*
		 * One call for the whole, as a restore reads one VMA: the
		 * restorer's preadv() (plain), criu's queued reads of its
		 * contiguous pagemap entries (encrypted).
		 */
		auto t0 = std::chrono::steady_clock::now();
		bool ok = out < 0 ? pread(mfd, mem, len, 0) == static_cast<ssize_t>(len)
				  : pool.value().read(out, kVaddr, 0, {mem, len}).ok();
		if (!ok)
			return -1;
		ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
		munmap(mem, len);
	}
	if (out >= 0)
		close(out);
	std::sort(ms.begin(), ms.end());
	return ms[ms.size() / 2];
}

} /* namespace */

int main(int argc, char **argv)
{
	if (argc < 2) {
		std::fprintf(stderr, "usage: criusec-bench-floor MIB [REPEAT [none|pipe|zstd|lz4|ALG-restore|copy [FILE]]]\n");
		return 2;
	}
	size_t len = static_cast<size_t>(std::atol(argv[1])) << 20;
	int repeat = argc > 2 ? std::atoi(argv[2]) : 5;
	std::string alg = argc > 3 ? argv[3] : "none";
	const char *file = argc > 4 ? argv[4] : nullptr;
	bool restore = alg == "copy" || (alg.size() > 8 && alg.ends_with("-restore"));
	if (restore && alg != "copy")
		alg.resize(alg.size() - 8);
	auto ctx = Ctx::create(default_aead());
	if (!ctx.ok() || repeat < 1)
		return 1;
	if (alg == "zstd" || alg == "lz4") {
		if (!ctx.value().set_compress(alg == "zstd" ? CompressAlg::Zstd : CompressAlg::Lz4).ok())
			return 1;
	} else if (alg != "none" && alg != "pipe" && alg != "copy") {
		std::fprintf(stderr, "criusec-bench-floor: no algorithm %s\n", alg.c_str());
		return 2;
	}
	std::vector<uint8_t> pages(len);
	if (!fill(pages, file)) {
		std::fprintf(stderr, "criusec-bench-floor: can't read pages\n");
		return 1;
	}
	len = pages.size();
	int mfd = -1;
	if (alg != "none") {
		mfd = memfd_create("pages", MFD_CLOEXEC);
		if (mfd < 0 || !write_full(mfd, pages).ok())
			return 1;
	}
	if (restore) {
		double m = restore_floor(ctx.value(), pages, mfd, alg, repeat);
		if (m < 0) {
			std::fprintf(stderr, "criusec-bench-floor: the restore side failed\n");
			return 1;
		}
		std::printf("%.1f\n", m);
		return 0;
	}
	std::vector<uint8_t> tags(len / kPageSize * kPageTagLen);
	std::vector<double> ms;
	for (int i = 0; i < repeat; i++) {
		auto pool = PagePool::create(ctx.value(), "pages-1.img");
		if (!pool.ok())
			return 1;
		auto t0 = std::chrono::steady_clock::now();
		if (alg == "none") {
			if (!pool.value().seal(kVaddr, 0, pages, tags).ok())
				return 1;
		} else {
			pool.value().write_behind();
			auto drop = [](std::span<const uint8_t>) { return Status{}; };
			if (lseek(mfd, 0, SEEK_SET) != 0)
				return 1;
			for (size_t off = 0; off < len; off += kRunLen)
				if (!pool.value().append_pipe(mfd, drop, kVaddr + off, std::min(kRunLen, len - off)).ok())
					return 1;
			if (!pool.value().flush().ok())
				return 1;
		}
		ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
	}
	std::sort(ms.begin(), ms.end());
	std::printf("%.1f\n", ms[ms.size() / 2]);
	return 0;
}
