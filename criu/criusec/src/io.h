/* Blocking-style fd I/O that copes with short reads/writes, EINTR and EAGAIN. */
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

#include "secure_bytes.h"
#include "status.h"

namespace criusec {

/* Read until buf is full or EOF; the count read is < buf.size() only at EOF. */
[[nodiscard]] Result<size_t> read_full(int fd, std::span<uint8_t> buf);
[[nodiscard]] Status write_full(int fd, std::span<const uint8_t> buf);

/* A whole (small) file, e.g. a PEM certificate or key; wiped when freed. */
[[nodiscard]] Result<SecureBytes> read_small_file(const char *path, size_t max_size);

/* strerror, thread-safe. */
std::string errno_string(int err);

} /* namespace criusec */
