#include "keyring.h"

#include <cerrno>
#include <cstdio>

#include <linux/keyctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "io.h"

namespace criusec {

std::string keyring_desc(std::span<const uint8_t, kIdLen> id)
{
	std::string desc = "criusec:";
	char hex[3];
	for (uint8_t b : id) {
		std::snprintf(hex, sizeof(hex), "%02x", b);
		desc += hex;
	}
	return desc;
}

/* Not keyutils: one more library for three system calls. */
Status keyring_store(const std::string &desc, std::span<const uint8_t> secret, unsigned int ttl_seconds,
		     Status &restricted)
{
	long key = syscall(SYS_add_key, "user", desc.c_str(), secret.data(), secret.size(), KEY_SPEC_USER_KEYRING);
	if (key < 0) {
		int e = errno;
		return Status::error(e, errno_string(e));
	}
	restricted = Status{};
	if (syscall(SYS_keyctl, KEYCTL_SETPERM, key, kKeyringPerm) ||
	    syscall(SYS_keyctl, KEYCTL_SET_TIMEOUT, key, ttl_seconds)) {
		int e = errno;
		restricted = Status::error(e, errno_string(e));
	}
	return {};
}

Result<SecureBytes> keyring_read(const std::string &desc, size_t len)
{
	long key = syscall(SYS_keyctl, KEYCTL_SEARCH, KEY_SPEC_USER_KEYRING, "user", desc.c_str(), 0);
	if (key < 0) {
		int e = errno;
		return Status::error(ENOKEY, "no key " + desc + " in the keyring: " + errno_string(e));
	}
	/* KEYCTL_READ returns the key's whole length, also when it is longer than the buffer. */
	SecureBytes secret(len);
	long n = syscall(SYS_keyctl, KEYCTL_READ, key, secret.data(), secret.size());
	if (n < 0) {
		int e = errno;
		return Status::error(EIO, "can't read the key " + desc + ": " + errno_string(e));
	}
	if (static_cast<size_t>(n) != len)
		return Status::error(EIO, "the key " + desc + " has " + std::to_string(n) + " bytes, not " +
						  std::to_string(len));
	return secret;
}

} /* namespace criusec */
