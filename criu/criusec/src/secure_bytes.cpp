#include "secure_bytes.h"

#include <dlfcn.h>
#include <gmp.h>
#include <sys/mman.h>
#include <unistd.h>

#include <array>
#include <atomic>
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

/*
 * Freed SecureBytes mappings, wiped, kept for the next of the same size: a
 * checkpoint opens dozens of images, each with its keys and chunk buffers,
 * and a fresh mapping each time costs mmap, madvise, mlock, its page
 * faults and, in a process with helper threads, a TLB shootdown on
 * munmap.  Bounded, so the locked memory it keeps stays small.  try_lock
 * only: a contended pool, or one whose lock a fork left held in the child,
 * is simply bypassed.
 */
class SecretPool {
public:
	void *take(size_t len) noexcept
	{
		std::unique_lock lk(m_, std::try_to_lock);
		if (!lk.owns_lock())
			return nullptr;
		for (size_t i = 0; i < n_; i++) {
			if (slots_[i].len != len)
				continue;
			void *p = slots_[i].p;
			slots_[i] = slots_[--n_];
			bytes_ -= len;
			return p;
		}
		return nullptr;
	}

	/* p's len bytes are wiped already; false: not kept, unmap it. */
	bool give(void *p, size_t len) noexcept
	{
		if (len > kMaxBytes / 4)
			return false;
		std::unique_lock lk(m_, std::try_to_lock);
		if (!lk.owns_lock() || n_ == slots_.size() || bytes_ + len > kMaxBytes)
			return false;
		slots_[n_++] = {p, len};
		bytes_ += len;
		return true;
	}

private:
	static constexpr size_t kMaxBytes = 4u << 20;
	struct Slot {
		void *p;
		size_t len;
	};
	std::mutex m_;
	std::array<Slot, 64> slots_{};
	size_t n_ = 0;
	size_t bytes_ = 0;
};

SecretPool &secret_pool() noexcept
{
	/* Never destroyed: a static SecureBytes may be freed after static destructors ran. */
	static SecretPool *pool = new SecretPool;
	return *pool;
}

uint8_t *secret_alloc(size_t n)
{
	size_t len = mapped_size(n);
	void *p = secret_pool().take(len);
	if (!p)
		p = secret_mmap(-1, len, MAP_PRIVATE | MAP_ANONYMOUS);
	if (!p)
		throw std::bad_alloc();
	return static_cast<uint8_t *>(p);
}

void secret_free(void *p, size_t len) noexcept
{
	gnutls_memset(p, 0, len);
	if (secret_pool().give(p, len))
		return; /* zeroed, as a fresh mapping would be */
	munlock(p, len);
	munmap(p, len);
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

namespace {

using GmpSetFn = void (*)(void *(*)(size_t), void *(*)(void *, size_t, size_t), void (*)(void *, size_t));

/* Resolved at the first call, which GnuTLS's constructor makes before main() */
GmpSetFn real_gmp_set()
{
	static const GmpSetFn real = reinterpret_cast<GmpSetFn>(dlsym(RTLD_NEXT, "__gmp_set_memory_functions"));
	return real;
}

std::atomic<bool> gmp_wiping{false};

} /* namespace */

void wipe_bignum_scratch()
{
	static std::once_flag once;
	std::call_once(once, [] {
		GmpSetFn set = real_gmp_set();
		if (!set)
			return;
		set(gmp_alloc, gmp_realloc, gmp_free);
		gmp_wiping.store(true);
	});
}

bool bignum_scratch_wiped()
{
	void (*f)(void *, size_t) = nullptr;
	mp_get_memory_functions(nullptr, nullptr, &f);
	return f == gmp_free;
}

} /* namespace criusec */

/*
 * GMP's allocators are one per process, and libraries set them: libnftables
 * does on its first context, and criu's kerndat makes one in a child that
 * shares criu's memory (CLONE_VM), while the early unwrap of a restore
 * (criusec-prefetch.c) runs an RSA operation in a thread.  Once criusec's
 * wiping allocators are in, a request to put others back is ignored: they
 * would leave that operation's PKCS#1 block, master key included, in
 * freed heap.  Theirs are malloc, realloc and free as well; ours only wipe.
 */
extern "C" __attribute__((visibility("default"))) void
__gmp_set_memory_functions(void *(*a)(size_t), void *(*r)(void *, size_t, size_t),
					   void (*f)(void *, size_t))
{
	criusec::GmpSetFn set = criusec::real_gmp_set();

	if (set && !criusec::gmp_wiping.load())
		set(a, r, f);
}

namespace criusec {

SecureBytes::SecureBytes(size_t n) : p_(n ? secret_alloc(n) : nullptr), n_(n) {}

SecureBytes::SecureBytes(std::span<const uint8_t> src) : SecureBytes(src.size())
{
	if (n_)
		std::memcpy(p_, src.data(), n_);
}

void SecureBytes::reset() noexcept
{
	if (p_)
		secret_free(p_, mapped_size(n_));
	p_ = nullptr;
	n_ = 0;
}

} /* namespace criusec */
