/* The chain keyring and secret memory through the C API (criusec_keyring_*, criusec_secret_*). */
#include <gtest/gtest.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include <linux/keyctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "capi_testing.h"
#include "criusec.h"
#include "test_util.h"

using namespace criusec::test;

namespace {

using CtxPtr = std::unique_ptr<criusec_ctx, decltype(&criusec_ctx_free)>;

/* A sealed checkpoint context and its exported header (valid while ctx lives). */
CtxPtr sealed(criusec_header &h)
{
	CtxPtr c(criusec_ctx_new(CRIUSEC_AEAD_AES_256_GCM), criusec_ctx_free);
	EXPECT_NE(c.get(), nullptr) << criusec_last_error();
	EXPECT_EQ(criusec_ctx_add_recipient(c.get(), test_key("r1", 2048).cert.c_str(), 0), 0) << criusec_last_error();
	uint8_t digest[CRIUSEC_DIGEST_LEN] = {};
	EXPECT_EQ(criusec_ctx_seal_header(c.get(), nullptr, digest), 0) << criusec_last_error();
	EXPECT_EQ(criusec_ctx_export(c.get(), &h), 0) << criusec_last_error();
	return c;
}

std::string desc_of(const uint8_t *id)
{
	std::string d = "criusec:";
	char hex[3];
	for (size_t i = 0; i < CRIUSEC_ID_LEN; i++) {
		std::snprintf(hex, sizeof(hex), "%02x", id[i]);
		d += hex;
	}
	return d;
}

long find_key(const std::string &desc)
{
	return syscall(SYS_keyctl, KEYCTL_SEARCH, KEY_SPEC_USER_KEYRING, "user", desc.c_str(), 0);
}

/* Removes a test's key from the keyring, also when the test fails. */
struct Forget {
	std::string desc;
	~Forget()
	{
		long k = find_key(desc);
		if (k >= 0)
			syscall(SYS_keyctl, KEYCTL_UNLINK, k, KEY_SPEC_USER_KEYRING);
	}
};

/* Why the user keyring cannot be used here (seccomp, no CONFIG_KEYS), or "". */
std::string keyring_unavailable()
{
	std::string desc = "criusec-test:probe-" + std::to_string(getpid());
	long k = syscall(SYS_add_key, "user", desc.c_str(), "x", 1, KEY_SPEC_USER_KEYRING);
	if (k < 0)
		return std::string("add_key: ") + std::strerror(errno);
	syscall(SYS_keyctl, KEYCTL_UNLINK, k, KEY_SPEC_USER_KEYRING);
	return "";
}

TEST(Keyring, StoreThenImport)
{
	std::string why = keyring_unavailable();
	if (!why.empty())
		GTEST_SKIP() << "the user keyring is not available here (" << why << ")";
	criusec_header h;
	auto c = sealed(h);
	Forget forget{desc_of(criusec_ctx_id(c.get()))};
	char desc[CRIUSEC_KEYRING_DESC_LEN];
	ASSERT_EQ(criusec_keyring_store(c.get(), 600, desc, sizeof(desc)), 0) << criusec_last_error();
	EXPECT_EQ(std::string(desc), forget.desc);

	/* type;uid;gid;perm;description: restricted to its possessor and root's view. */
	long k = find_key(forget.desc);
	ASSERT_GE(k, 0);
	char info[256] = "";
	ASSERT_GT(syscall(SYS_keyctl, KEYCTL_DESCRIBE, k, info, sizeof(info)), 0);
	EXPECT_NE(std::string(info).find(";3f010000;" + forget.desc), std::string::npos) << info;

	bool found = false;
	char desc2[CRIUSEC_KEYRING_DESC_LEN];
	CtxPtr back(criusec_keyring_import(&h, &found, desc2, sizeof(desc2)), criusec_ctx_free);
	ASSERT_NE(back.get(), nullptr) << criusec_last_error();
	EXPECT_TRUE(found);
	EXPECT_EQ(std::string(desc2), forget.desc);
	EXPECT_EQ(std::memcmp(criusec_ctx_id(back.get()), criusec_ctx_id(c.get()), CRIUSEC_ID_LEN), 0);

	/* The same keys: what one seals, the other opens. */
	const char msg[] = "chain key round trip";
	uint8_t *st = nullptr, *pt = nullptr;
	size_t st_len = 0, pt_len = 0;
	ASSERT_EQ(criusec_stream_seal_buf(c.get(), "core", "core-1.img", msg, sizeof(msg), &st, &st_len, nullptr), 0)
		<< criusec_last_error();
	EXPECT_EQ(criusec_stream_open_buf(back.get(), "core", "core-1.img", st, st_len, &pt, &pt_len, nullptr), 0)
		<< criusec_last_error();
	ASSERT_EQ(pt_len, sizeof(msg));
	EXPECT_EQ(std::memcmp(pt, msg, pt_len), 0);
	std::free(st);
	std::free(pt);
}

TEST(Keyring, AbsentKeyIsNotFound)
{
	criusec_header h;
	auto c = sealed(h); /* a fresh checkpoint id: never stored */
	bool found = true;
	char desc[CRIUSEC_KEYRING_DESC_LEN];
	EXPECT_EQ(criusec_keyring_import(&h, &found, desc, sizeof(desc)), nullptr);
	EXPECT_FALSE(found);
	EXPECT_EQ(criusec_last_errno(), -ENOKEY) << criusec_last_error();
	EXPECT_EQ(std::string(desc), desc_of(h.ckpt_id));
}

TEST(Keyring, WrongKeyIsRefused)
{
	std::string why = keyring_unavailable();
	if (!why.empty())
		GTEST_SKIP() << "the user keyring is not available here (" << why << ")";
	criusec_header h;
	auto c = sealed(h);
	Forget forget{desc_of(h.ckpt_id)};
	bool found = true;
	char desc[CRIUSEC_KEYRING_DESC_LEN];

	/* Not a chain secret's length: there, but not read as one. */
	uint8_t wrong[CRIUSEC_CHAIN_SECRET_LEN] = {1, 2, 3};
	ASSERT_GE(syscall(SYS_add_key, "user", forget.desc.c_str(), wrong, sizeof(wrong) - 1, KEY_SPEC_USER_KEYRING),
		  0);
	EXPECT_EQ(criusec_keyring_import(&h, &found, desc, sizeof(desc)), nullptr);
	EXPECT_FALSE(found);
	EXPECT_NE(criusec_last_errno(), -ENOKEY);
	EXPECT_NE(criusec_last_errno(), 0);

	/* The right length, not the checkpoint's secret: read, and the header's MAC refuses it. */
	ASSERT_GE(syscall(SYS_add_key, "user", forget.desc.c_str(), wrong, sizeof(wrong), KEY_SPEC_USER_KEYRING), 0);
	EXPECT_EQ(criusec_keyring_import(&h, &found, desc, sizeof(desc)), nullptr);
	EXPECT_TRUE(found);
	EXPECT_EQ(criusec_last_errno(), -EBADMSG) << criusec_last_error();
}

TEST(Keyring, BadArguments)
{
	char desc[CRIUSEC_KEYRING_DESC_LEN] = "x";
	EXPECT_EQ(criusec_keyring_store(nullptr, 60, desc, sizeof(desc)), -EINVAL);
	EXPECT_STREQ(desc, ""); /* nothing was tried */
	criusec_header h;
	auto c = sealed(h);
	char small[8];
	EXPECT_EQ(criusec_keyring_store(c.get(), 60, small, sizeof(small)), -EINVAL);
	bool found = true;
	EXPECT_EQ(criusec_keyring_import(&h, &found, small, sizeof(small)), nullptr);
	EXPECT_FALSE(found);
	EXPECT_EQ(criusec_last_errno(), -EINVAL);
}

/* The VmFlags of the mapping that starts at p, from /proc/self/smaps. */
std::string vm_flags(const void *p)
{
	char start[32];
	std::snprintf(start, sizeof(start), "%lx-", reinterpret_cast<unsigned long>(p));
	std::ifstream f("/proc/self/smaps");
	std::string line;
	bool in = false;
	while (std::getline(f, line)) {
		if (line.rfind(start, 0) == 0)
			in = true;
		else if (in && line.rfind("VmFlags:", 0) == 0)
			return line;
	}
	return "";
}

TEST(SecretMemory, MapsSharedOutOfCoreDumpsAndWipes)
{
	constexpr size_t kLen = 3 * 4096 + 100;
	int fd = memfd_create("criusec-test-secret", MFD_CLOEXEC);
	ASSERT_GE(fd, 0);
	std::vector<uint8_t> data(kLen);
	for (size_t i = 0; i < kLen; i++)
		data[i] = static_cast<uint8_t>(i * 7 + 1);
	write_all(fd, data);

	auto *p = static_cast<uint8_t *>(criusec_secret_map(fd, kLen));
	ASSERT_NE(p, nullptr) << criusec_last_error();
	EXPECT_EQ(std::memcmp(p, data.data(), kLen), 0);
	EXPECT_NE(vm_flags(p).find(" dd"), std::string::npos) << vm_flags(p);
	/* Shared: the file sees what is written through the mapping. */
	p[5] = 0xee;
	uint8_t b = 0;
	ASSERT_EQ(pread(fd, &b, 1, 5), 1);
	EXPECT_EQ(b, 0xee);

	criusec_secret_unmap(p, kLen);
	/* Wiped before it went: the file holds zeros now, and the mapping is gone. */
	std::vector<uint8_t> after(kLen, 0xff);
	ASSERT_EQ(pread(fd, after.data(), kLen, 0), static_cast<ssize_t>(kLen));
	EXPECT_EQ(after, std::vector<uint8_t>(kLen, 0));
	errno = 0;
	EXPECT_EQ(msync(p, 4096, MS_ASYNC), -1);
	EXPECT_EQ(errno, ENOMEM);
	close(fd);

	criusec_secret_unmap(nullptr, kLen); /* nothing to do */
}

TEST(SecretMemory, FailureKeepsErrno)
{
	errno = 0;
	EXPECT_EQ(criusec_secret_map(1 << 20, 4096), nullptr); /* not an open descriptor (-1 is anonymous memory) */
	EXPECT_EQ(errno, EBADF);
	EXPECT_EQ(criusec_last_errno(), -EBADF);
	int fd = memfd_create("criusec-test-empty", MFD_CLOEXEC);
	ASSERT_GE(fd, 0);
	errno = 0;
	EXPECT_EQ(criusec_secret_map(fd, 0), nullptr);
	EXPECT_EQ(errno, EINVAL);
	close(fd);
}

} /* namespace */
