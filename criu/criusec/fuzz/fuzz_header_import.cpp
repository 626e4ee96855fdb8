/*
 * libFuzzer target: arbitrary bytes laid out as a struct criusec_header
 * (see fuzz_common.h), imported with the fixed test key.
 */
#include <cstdlib>
#include <string>

#include "fuzz_common.h"

namespace {

std::string g_key_path;

} /* namespace */

extern "C" int LLVMFuzzerInitialize(int *, char ***)
{
	g_key_path = fuzz::write_temp(kFuzzKeyPem, "key");
	atexit([] { unlink(g_key_path.c_str()); });
	return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	auto ph = fuzz::parse_header(data, size);
	criusec_ctx *ctx = criusec_ctx_import(&ph.hdr, g_key_path.c_str());
	if (!ctx) {
		if (criusec_last_error()[0] == '\0')
			abort();
		return 0;
	}
	/* Accepted: it must be self-consistent (re-export gives the same MAC). */
	criusec_header again;
	if (criusec_ctx_export(ctx, &again) || std::memcmp(again.mac, ph.hdr.mac, sizeof(again.mac)))
		abort();
	criusec_ctx_free(ctx);
	return 0;
}
