/*
 * SecureBytes: a fixed-size buffer for secrets (master key, PRK,
 * subkeys, unwrapped keys, plaintext staging) on pages of its own that
 * core dumps leave out (and locked in memory where the limit allows),
 * wiped with gnutls_memset, which the compiler may not elide, before it
 * is freed.
 * Move-only, so a secret is never silently duplicated; clone() is explicit.
 */
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <utility>

namespace criusec {

/*
 * The scratch memory of RSA and EC operations (GMP numbers, under nettle
 * and GnuTLS) is wiped when freed: a PKCS#1 block holding a wrapped master
 * key, or a private key's blinded values, would otherwise stay in freed
 * heap.  Process-wide, once; called before the engine's first operation
 * with a key.
 */
void wipe_bignum_scratch();
/* GMP frees through the wiping allocator (tests) */
bool bignum_scratch_wiped();

/*
 * Secret memory that is not a SecureBytes: the len bytes of the file fd
 * (a memfd of authenticated plaintext) mapped MAP_SHARED, or with fd -1
 * len zeroed private bytes, on the same terms (out of core dumps, locked
 * where the limit allows).  nullptr with errno set on failure.
 * secret_unmap() wipes the len bytes, then unmaps.
 */
void *secret_map(int fd, size_t len) noexcept;
void secret_unmap(void *p, size_t len) noexcept;

class SecureBytes {
public:
	SecureBytes() noexcept = default;
	/* n zero bytes.  (Out of line: it keeps GCC 12's allocation-size heuristics quiet.) */
	explicit SecureBytes(size_t n);
	explicit SecureBytes(std::span<const uint8_t> src);

	SecureBytes(const SecureBytes &) = delete;
	SecureBytes &operator=(const SecureBytes &) = delete;
	SecureBytes(SecureBytes &&o) noexcept : p_(std::exchange(o.p_, nullptr)), n_(std::exchange(o.n_, 0)) {}
	SecureBytes &operator=(SecureBytes &&o) noexcept
	{
		if (this != &o) {
			reset();
			p_ = std::exchange(o.p_, nullptr);
			n_ = std::exchange(o.n_, 0);
		}
		return *this;
	}
	~SecureBytes() { reset(); }

	SecureBytes clone() const { return SecureBytes(span()); }

	uint8_t *data() noexcept { return p_; }
	const uint8_t *data() const noexcept { return p_; }
	size_t size() const noexcept { return n_; }
	bool empty() const noexcept { return n_ == 0; }
	std::span<uint8_t> span() noexcept { return {p_, n_}; }
	std::span<const uint8_t> span() const noexcept { return {p_, n_}; }

	void swap(SecureBytes &o) noexcept
	{
		std::swap(p_, o.p_);
		std::swap(n_, o.n_);
	}

	void reset() noexcept;

private:
	uint8_t *p_ = nullptr;
	size_t n_ = 0;
};

} /* namespace criusec */
