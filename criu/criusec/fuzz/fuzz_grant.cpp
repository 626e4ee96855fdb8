/*
 * libFuzzer target: arbitrary bytes as a page server's grant (they come
 * from the network).  Sealing under it must fail cleanly, with a reason,
 * or produce a whole stream.
 */
#include <sys/mman.h>
#include <unistd.h>

#include <cstdlib>
#include <vector>

#include "fuzz_common.h"

namespace {

criusec_ctx *g_ctx;
int g_in = -1, g_out = -1;
const std::vector<uint8_t> kPlain(5000, 0x5a);

} /* namespace */

extern "C" int LLVMFuzzerInitialize(int *, char ***)
{
	g_ctx = fuzz::fixed_ctx(criusec::AeadAlg::Aes256Gcm);
	g_in = memfd_create("fuzz-in", MFD_CLOEXEC);
	g_out = memfd_create("fuzz-out", MFD_CLOEXEC);
	if (g_in < 0 || g_out < 0 || pwrite(g_in, kPlain.data(), kPlain.size(), 0) != (ssize_t)kPlain.size())
		abort();
	return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (lseek(g_in, 0, SEEK_SET) != 0 || ftruncate(g_out, 0) || lseek(g_out, 0, SEEK_SET) != 0)
		abort();
	int rc = criusec_stream_seal_granted_fd(data, size, "pagemap", "pagemap-1.img", g_in, g_out);
	off_t len = lseek(g_out, 0, SEEK_END);
	if (rc > 0 || (rc < 0 && criusec_last_error()[0] == '\0'))
		abort();
	if (rc < 0)
		return 0;
	/*
	 * Any chunk size the grant names: the output is header + chunks + tags,
	 * of the plaintext or (byte 11 of the grant's stream header) of its
	 * compressed blocks, which are smaller.
	 */
	size_t content = size > 19 && data[19] ? 1 : kPlain.size();
	if (len <= static_cast<off_t>(28 + content))
		abort();
	return 0;
}
