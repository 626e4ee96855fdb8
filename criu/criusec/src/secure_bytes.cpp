#include "secure_bytes.h"

#include <cstring>

#include <gnutls/gnutls.h>

namespace criusec {

SecureBytes::SecureBytes(size_t n) : p_(n ? new uint8_t[n]() : nullptr), n_(n) {}

SecureBytes::SecureBytes(std::span<const uint8_t> src) : SecureBytes(src.size())
{
	if (n_)
		std::memcpy(p_, src.data(), n_);
}

void SecureBytes::reset() noexcept
{
	if (p_) {
		/* gnutls_memset is not optimized away, unlike a memset before delete. */
		gnutls_memset(p_, 0, n_);
		delete[] p_;
	}
	p_ = nullptr;
	n_ = 0;
}

} /* namespace criusec */
