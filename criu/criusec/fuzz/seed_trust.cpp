/*
 * criusec-fuzz-trust-seeds DIR: seeds for fuzz_trust in DIR: chains the
 * fixed trust store accepts (through the intermediate, pinned), signed
 * with both RSA algorithms, and near-misses.
 */
#include <sys/stat.h>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>

#include "fuzz_key.h"
#include "fuzz_trust.h"
#include "pki.h"

namespace {

criusec::Der der_of(const char *pem)
{
	auto v = criusec::certs_from_pem({reinterpret_cast<const uint8_t *>(pem), std::strlen(pem)});
	if (!v.ok())
		abort();
	return v.value()[0];
}

} /* namespace */

int main(int argc, char **argv)
{
	if (argc != 2) {
		std::fprintf(stderr, "usage: criusec-fuzz-trust-seeds DIR\n");
		return 2;
	}
	using criusec::SigAlg;
	const std::string dir = argv[1];
	mkdir(dir.c_str(), 0755);
	const auto store = fuzz::make_trust_store(kFuzzCertPem);
	const criusec::Der ca = der_of(fuzz::kFuzzTrustCaPem), inter = der_of(fuzz::kFuzzTrustIntermediatePem),
			   leaf = der_of(fuzz::kFuzzTrustSignerPem), pinned = der_of(kFuzzCertPem);
	const auto msg = criusec::as_bytes(fuzz::kSignedData);

	/* Every certificate above that a signer holds is for kFuzzKeyPem: one key signs for all. */
	auto key =
		criusec::privkey_load_pem({reinterpret_cast<const uint8_t *>(kFuzzKeyPem), std::strlen(kFuzzKeyPem)});
	if (!key.ok())
		return 1;
	gnutls_datum_t d = criusec::as_datum(msg.data(), msg.size());
	criusec::Datum pkcs1;
	if (gnutls_privkey_sign_data2(key.value().get(), GNUTLS_SIGN_RSA_SHA256, 0, &d, pkcs1.out()) < 0)
		return 1;
	auto signer = criusec::Signer::create(std::move(key).value(), criusec::as_bytes(kFuzzCertPem), fuzz::kTrustNow);
	if (!signer.ok())
		return 1;
	auto pss = signer.value().sign(msg);
	if (!pss.ok())
		return 1;

	struct Seed {
		const char *name;
		std::vector<criusec::Der> chain;
	} seeds[] = {
		{"via-intermediate", {leaf, inter}}, {"with-anchor", {leaf, inter, ca}}, {"pinned", {pinned}},
		{"no-intermediate", {leaf}},         {"unsorted", {inter, leaf}},
	};
	struct Sig {
		SigAlg alg;
		std::vector<uint8_t> bytes;
	} sigs[] = {
		{SigAlg::RsaPssSha256, pss.value()},
		{SigAlg::RsaPkcs1Sha256, {pkcs1.data(), pkcs1.data() + pkcs1.size()}},
		{SigAlg::EcdsaP256Sha256, pss.value()}, /* does not match the key */
	};
	int n = 0;
	for (const auto &s : seeds)
		for (const auto &sig : sigs) {
			fuzz::TrustInput in{static_cast<uint32_t>(sig.alg), s.chain, sig.bytes};
			auto bytes = fuzz::serialize_trust_input(in);
			std::ofstream f(dir + "/" + s.name + "-" + std::to_string(n++), std::ios::binary);
			f.write(reinterpret_cast<const char *>(bytes.data()),
				static_cast<std::streamsize>(bytes.size()));
		}
	/* Checked here so that a stale fixed certificate or a broken seed is noticed. */
	if (!store.verify(std::vector<criusec::Der>{leaf, inter}, fuzz::kTrustNow).ok() ||
	    !criusec::verify_signature(SigAlg::RsaPkcs1Sha256, leaf, msg, sigs[1].bytes).ok() ||
	    !criusec::verify_signature(SigAlg::RsaPssSha256, leaf, msg, sigs[0].bytes).ok()) {
		std::fprintf(stderr, "criusec-fuzz-trust-seeds: the fixed material no longer verifies\n");
		return 1;
	}
	std::printf("%d trust seeds written to %s\n", n, dir.c_str());
	return 0;
}
