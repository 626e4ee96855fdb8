/*
 * The chain keyring: after an encrypted dump, its chain secret waits in
 * root's user keyring (never on disk, readable by root only, gone after a
 * timeout), so that a later incremental dump on the same host reads the
 * checkpoint as its parent even when that host is none of its recipients
 * (it dumps for a target host and an escrow key).  A key of type "user"
 * named "criusec:" and the checkpoint id in hex.
 */
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

#include "ctx.h"
#include "secure_bytes.h"
#include "status.h"

namespace criusec {

/* possessor: all; user (root): view.  Nobody else, not even to see it is there. */
constexpr uint32_t kKeyringPerm = 0x3f010000;

/* "criusec:" + hex(id), the key's description. */
std::string keyring_desc(std::span<const uint8_t, kIdLen> id);

/*
 * Add secret to the user keyring under desc, then restrict it (kKeyringPerm)
 * and set its timeout.  Not added: the error (its message the errno's
 * text).  Added: success, and restricted gets the outcome of restricting
 * it, which fails the same way but leaves the key in place.
 */
[[nodiscard]] Status keyring_store(const std::string &desc, std::span<const uint8_t> secret, unsigned int ttl_seconds,
				   Status &restricted);

/*
 * The secret stored under desc, of exactly len bytes.  ENOKEY when the
 * keyring holds no such key (or cannot be searched), EIO when it is there
 * but cannot be read or is not len bytes.
 */
[[nodiscard]] Result<SecureBytes> keyring_read(const std::string &desc, size_t len);

} /* namespace criusec */
