/* Big-endian serialization helpers for the formats. */
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string_view>
#include <vector>

namespace criusec {

/* resize + memcpy rather than insert(): GCC 12 misreports insert() at -O2 (-Wstringop-overflow). */
inline void put_raw(std::vector<uint8_t> &v, const void *p, size_t n)
{
	if (!n)
		return;
	size_t old = v.size();
	v.resize(old + n);
	std::memcpy(v.data() + old, p, n);
}

inline void put_u8(std::vector<uint8_t> &v, uint8_t x) { v.push_back(x); }

inline void put_u32(std::vector<uint8_t> &v, uint32_t x)
{
	for (int shift = 24; shift >= 0; shift -= 8)
		v.push_back(static_cast<uint8_t>(x >> shift));
}

inline void put_u64(std::vector<uint8_t> &v, uint64_t x)
{
	put_u32(v, static_cast<uint32_t>(x >> 32));
	put_u32(v, static_cast<uint32_t>(x));
}

inline void put_bytes(std::vector<uint8_t> &v, std::span<const uint8_t> b) { put_raw(v, b.data(), b.size()); }

inline void put_str(std::vector<uint8_t> &v, std::string_view s) { put_raw(v, s.data(), s.size()); }

inline std::span<const uint8_t> as_bytes(std::string_view s) noexcept
{
	return {reinterpret_cast<const uint8_t *>(s.data()), s.size()};
}

} /* namespace criusec */
