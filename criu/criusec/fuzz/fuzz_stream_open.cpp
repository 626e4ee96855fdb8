/*
 * libFuzzer target: arbitrary bytes as an encrypted image, opened with a
 * fixed context through both criusec_stream_open_buf and
 * criusec_stream_open_fd, which must agree.
 */
#include <sys/mman.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <vector>

#include "capi_testing.h"
#include "fuzz_common.h"

namespace {

criusec_ctx *g_gcm, *g_chacha;
int g_in = -1, g_out = -1;

std::vector<uint8_t> slurp(int fd)
{
	std::vector<uint8_t> v;
	off_t end = lseek(fd, 0, SEEK_END);
	v.resize(static_cast<size_t>(end));
	if (end > 0 && pread(fd, v.data(), v.size(), 0) != end)
		abort();
	return v;
}

} /* namespace */

extern "C" int LLVMFuzzerInitialize(int *, char ***)
{
	g_gcm = fuzz::fixed_ctx(criusec::AeadAlg::Aes256Gcm);
	g_chacha = fuzz::fixed_ctx(criusec::AeadAlg::ChaCha20Poly1305);
	g_in = memfd_create("fuzz-in", MFD_CLOEXEC);
	g_out = memfd_create("fuzz-out", MFD_CLOEXEC);
	if (g_in < 0 || g_out < 0)
		abort();
	return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	/* Follow the stream's own AEAD byte, so both AEADs get exercised. */
	criusec_ctx *ctx = size > 9 && data[9] == CRIUSEC_AEAD_CHACHA20_POLY1305 ? g_chacha : g_gcm;

	uint8_t *out = nullptr;
	size_t out_len = 0;
	int rc = criusec_stream_open_buf(ctx, "core", "core-1.img", data, size, &out, &out_len, nullptr);
	if (rc > 0 || (rc == 0) != (out != nullptr) || (rc < 0 && criusec_last_error()[0] == '\0'))
		abort();

	if (ftruncate(g_in, 0) || ftruncate(g_out, 0) || lseek(g_out, 0, SEEK_SET) != 0)
		abort();
	if (size && pwrite(g_in, data, size, 0) != static_cast<ssize_t>(size))
		abort();
	if (lseek(g_in, 0, SEEK_SET) != 0)
		abort();
	int rc_fd = criusec_stream_open_fd(ctx, "core", "core-1.img", g_in, g_out, nullptr);
	auto fd_out = slurp(g_out);

	/* Differential check: same verdict, same plaintext; a failing fd open only wrote a verified prefix. */
	if ((rc == 0) != (rc_fd == 0))
		abort();
	if (rc == 0 && (fd_out.size() != out_len || (out_len && std::memcmp(fd_out.data(), out, out_len))))
		abort();
	if (rc != 0 && fd_out.size() % 4096)
		abort();
	free(out);
	return 0;
}
