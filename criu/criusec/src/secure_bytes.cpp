#include "secure_bytes.h"

#include <gmp.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <mutex>
#include <new>

#include <gnutls/gnutls.h>

namespace criusec {

namespace {

size_t mapped_size(size_t n) noexcept
{
	static const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
	return (n + page - 1) / page * page;
}

/*
 * Secrets get pages of their own: left out of core dumps (MADV_DONTDUMP)
 * and, where RLIMIT_MEMLOCK allows, kept out of swap (mlock; a failure
 * there is not an error).  The pages arrive zeroed.
 */
void *secret_mmap(int fd, size_t len, int flags) noexcept
{
	void *p = mmap(nullptr, len, PROT_READ | PROT_WRITE, flags, fd, 0);
	if (p == MAP_FAILED)
		return nullptr;
	madvise(p, len, MADV_DONTDUMP);
	(void)mlock(p, len);
	return p;
}

/* Wiped with gnutls_memset, which is not optimized away, unlike a memset before a free. */
void secret_munmap(void *p, size_t len) noexcept
{
	gnutls_memset(p, 0, len);
	munlock(p, len);
	munmap(p, len);
}

uint8_t *secret_alloc(size_t n)
{
	void *p = secret_mmap(-1, mapped_size(n), MAP_PRIVATE | MAP_ANONYMOUS);
	if (!p)
		throw std::bad_alloc();
	return static_cast<uint8_t *>(p);
}

/* GMP's allocators must not fail: it has no way to report it. */
void *gmp_alloc(size_t n)
{
	void *p = std::malloc(n ? n : 1);
	if (!p)
		std::abort();
	return p;
}

void gmp_free(void *p, size_t n)
{
	if (p) {
		gnutls_memset(p, 0, n);
		std::free(p);
	}
}

void *gmp_realloc(void *p, size_t old, size_t n)
{
	void *q = gmp_alloc(n);
	if (p) {
		std::memcpy(q, p, old < n ? old : n);
		gmp_free(p, old);
	}
	return q;
}

} /* namespace */

void *secret_map(int fd, size_t len) noexcept
{
	return fd < 0 ? secret_mmap(-1, len, MAP_PRIVATE | MAP_ANONYMOUS) : secret_mmap(fd, len, MAP_SHARED);
}

void secret_unmap(void *p, size_t len) noexcept
{
	if (p)
		secret_munmap(p, len);
}

void wipe_bignum_scratch()
{
	static std::once_flag once;
	std::call_once(once, [] { mp_set_memory_functions(gmp_alloc, gmp_realloc, gmp_free); });
}

SecureBytes::SecureBytes(size_t n) : p_(n ? secret_alloc(n) : nullptr), n_(n) {}

SecureBytes::SecureBytes(std::span<const uint8_t> src) : SecureBytes(src.size())
{
	if (n_)
		std::memcpy(p_, src.data(), n_);
}

void SecureBytes::reset() noexcept
{
	if (p_)
		secret_munmap(p_, mapped_size(n_));
	p_ = nullptr;
	n_ = 0;
}

} /* namespace criusec */
