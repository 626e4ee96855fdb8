/*
 * libFuzzer target: arbitrary bytes laid out as a struct criusec_header
 * (see fuzz_common.h): checked against the restore policy (no trust, and
 * the fixed test certificate pinned), then imported with the fixed key.
 */
#include <cstdlib>
#include <string>

#include "fuzz_common.h"

namespace {

std::string g_key_path;
criusec_trust *g_trust;

void check_policies(const criusec_header &h)
{
	criusec_policy none{}, pinned{};
	pinned.trust = g_trust;
	pinned.max_age = 1 << 30;
	criusec_verdict v;
	for (const auto *p : {&none, &pinned}) {
		int rc = criusec_header_check(&h, p, &v);
		if (rc && criusec_last_error()[0] == '\0')
			abort();
		/* Nothing is trusted that is not signed. */
		if (rc == 0 && p == &pinned && (!v.is_signed || !v.trusted))
			abort();
	}
}

} /* namespace */

extern "C" int LLVMFuzzerInitialize(int *, char ***)
{
	g_key_path = fuzz::write_temp(kFuzzKeyPem, "key");
	std::string cert = fuzz::write_temp(kFuzzCertPem, "cert");
	g_trust = criusec_trust_new();
	if (!g_trust || criusec_trust_add_file(g_trust, cert.c_str()))
		abort();
	unlink(cert.c_str());
	atexit([] { unlink(g_key_path.c_str()); });
	return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	auto ph = fuzz::parse_header(data, size);
	check_policies(ph.hdr);
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
