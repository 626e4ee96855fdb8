/*
 * SecureBytes: a fixed-size heap buffer for secrets (master key, PRK,
 * subkeys, unwrapped keys, plaintext staging) that is wiped with
 * gnutls_memset, which the compiler may not elide, before it is freed.
 * Move-only, so a secret is never silently duplicated; clone() is explicit.
 */
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <utility>

namespace criusec {

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
