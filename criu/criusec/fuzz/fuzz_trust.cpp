/*
 * Untrusted signer data from cipher.img (sig_alg, signer chain DER,
 * signature) through verify_signature and TrustStore::verify: nothing may
 * crash, leak or hang, whatever the bytes.
 */
#include <cstddef>
#include <cstdint>

#include "fuzz_key.h"
#include "fuzz_trust.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const criusec::TrustStore store = fuzz::make_trust_store(kFuzzCertPem);
	fuzz::TrustInput in = fuzz::parse_trust_input(data, size);
	const auto msg = criusec::as_bytes(fuzz::kSignedData);
	if (!in.chain.empty())
		(void)criusec::verify_signature(static_cast<criusec::SigAlg>(in.sig_alg), in.chain[0], msg,
						in.signature);
	(void)store.verify(in.chain, fuzz::kTrustNow);
	return 0;
}
