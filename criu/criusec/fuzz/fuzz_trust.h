/*
 * Shared by fuzz_trust and its seed generator: fixed certificates (public
 * test material, NOT SECRET), the trust store built from them, and the
 * layout that turns fuzz bytes into what a reader takes from an untrusted
 * format-2 cipher.img: sig_alg, the signer chain and the signature.
 *
 * Input layout (big-endian; a short input stops the chain early):
 *   u32 sig_alg | u8 n | n x ( u16 len | der[len] ) | signature (the rest)
 */
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string_view>
#include <vector>

#include "bytes.h"
#include "sign.h"
#include "trust.h"

namespace fuzz {

/* A CA, the trust anchor (its key was thrown away). */
inline const char kFuzzTrustCaPem[] =
	"-----BEGIN CERTIFICATE-----\n"
	"MIIBjTCCATKgAwIBAgIMO5l7/5FdrMvWyR8LMAoGCCqGSM49BAMCMCcxJTAjBgNV\n"
	"BAMTHGNyaXVzZWMgZnV6eiBDQSAobm90IHNlY3JldCkwIBcNMjYxMTMwMDcxMTQ3\n"
	"WhgPMjEyNjExMDYwODExNDdaMCcxJTAjBgNVBAMTHGNyaXVzZWMgZnV6eiBDQSAo\n"
	"bm90IHNlY3JldCkwWTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAARGgN/XbdfIHZhp\n"
	"a7Ct1E2loxn9Sb+gnqc4JMnAn6rLKOMhOnjUfs0WymDm3OGBjFjVsVQdHAUKhvWV\n"
	"5Ma/Mp6Bo0IwQDAPBgNVHRMBAf8EBTADAQH/MA4GA1UdDwEB/wQEAwIBBjAdBgNV\n"
	"HQ4EFgQUYaT9WS1o2jKwBBFuB6ZlngtXk8swCgYIKoZIzj0EAwIDSQAwRgIhALbJ\n"
	"CZx/DVNJchqU/HcSCjrHVb2NrxGb1RGEOP21YGuwAiEAhd9zJzWRRwBeFG5VnFh9\n"
	"M18oNrzPXFducHrdE7LlGKs=\n"
	"-----END CERTIFICATE-----\n";

/* An intermediate CA issued by it. */
inline const char kFuzzTrustIntermediatePem[] =
	"-----BEGIN CERTIFICATE-----\n"
	"MIIBtTCCAV2gAwIBAgIMYnmLI9mdX4DNp8hAMAoGCCqGSM49BAMCMCcxJTAjBgNV\n"
	"BAMTHGNyaXVzZWMgZnV6eiBDQSAobm90IHNlY3JldCkwIBcNMjYxMTMwMDcxMTQ3\n"
	"WhgPMjEyNjExMDYwODExNDdaMDExLzAtBgNVBAMTJmNyaXVzZWMgZnV6eiBpbnRl\n"
	"cm1lZGlhdGUgKG5vdCBzZWNyZXQpMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE\n"
	"m40aH68DNEH0O0OS/hcEtyrTzGIZlFEK1F1Jw4fsPvFqb+X1pHYhG6fOIyaKjod2\n"
	"C0h/UW6G/uy7sAelfGHi+qNjMGEwDwYDVR0TAQH/BAUwAwEB/zAOBgNVHQ8BAf8E\n"
	"BAMCAQYwHQYDVR0OBBYEFLx8NiEpVsEPK3s/77JykuM/kCa1MB8GA1UdIwQYMBaA\n"
	"FGGk/VktaNoysAQRbgemZZ4LV5PLMAoGCCqGSM49BAMCA0YAMEMCH3XWkApkGfFH\n"
	"rrQRIgff9gP0vn4zJWDQ8MEoB9eEL3sCIEALWR4wrLKJ62xGugiljRzbq+ehEDmx\n"
	"s0iR7Mtm8gSi\n"
	"-----END CERTIFICATE-----\n";

/* A certificate for kFuzzKeyPem (fuzz_key.h) issued by the intermediate. */
inline const char kFuzzTrustSignerPem[] =
	"-----BEGIN CERTIFICATE-----\n"
	"MIICgzCCAimgAwIBAgIMa2+ruwDI0NaBVo5tMAoGCCqGSM49BAMCMDExLzAtBgNV\n"
	"BAMTJmNyaXVzZWMgZnV6eiBpbnRlcm1lZGlhdGUgKG5vdCBzZWNyZXQpMCAXDTI2\n"
	"MTEzMDA3MTE0N1oYDzIxMjYxMTA2MDgxMTQ3WjArMSkwJwYDVQQDEyBjcml1c2Vj\n"
	"IGZ1enogc2lnbmVyIChub3Qgc2VjcmV0KTCCASIwDQYJKoZIhvcNAQEBBQADggEP\n"
	"ADCCAQoCggEBAMGHvnA0UlJu1f9CtEcLQR/vxN1oZnyERRDczkVm1YCQ3WFV060v\n"
	"cRXbHu5v0fUcEfnuJurClju8bDrkFWUk29mz6WciYE5l3mk6mItUXWH/rtsfVyAc\n"
	"eTMa5ifMgENh+i8PJMk+Mq3aR+4PQy3iKOVmNaHPYYsbZ/WTC9h4uLGIEWjHRK8o\n"
	"Rj5Opm/2dp7G59W/8qNaCAsnErG2G5Zc07WbUIxDqeLypiNFBMWQVppX0/5S/VFM\n"
	"eitUxU/0UD66jjsSGjEuwsmgCf7ADBy7UzaVnvLJp09N0u8FkywUp1ZhS917Btf5\n"
	"e2wyZ8bAXqwYAN+9OozIkLPfoNlZ9ji5HPkCAwEAAaNgMF4wDAYDVR0TAQH/BAIw\n"
	"ADAOBgNVHQ8BAf8EBAMCB4AwHQYDVR0OBBYEFJm9Ve3VJVXxUfgK73N2LFjkgFrF\n"
	"MB8GA1UdIwQYMBaAFLx8NiEpVsEPK3s/77JykuM/kCa1MAoGCCqGSM49BAMCA0gA\n"
	"MEUCIQDsTvOP95TbFoCypYJVt4X/ggEBK7JZSrSEEU/y5Pc16gIgKhgsh02iUDs5\n"
	"kqSOAxS/8fYT6futz/2iLooaC4kbeIw=\n"
	"-----END CERTIFICATE-----\n";

/* The time of every decision: inside all the validity periods above, and fixed, so runs repeat. */
constexpr uint64_t kTrustNow = 1900000000; /* 2030-03-17 */
/* What the signatures sign (a reader's canonical2). */
constexpr std::string_view kSignedData = "criusec-header-v2 fuzz stand-in";

/* Trusts the CA and, pinned, the self-signed certificate of fuzz_key.h. */
inline criusec::TrustStore make_trust_store(const char *pinned_pem)
{
	criusec::TrustStore ts;
	for (const char *pem : {kFuzzTrustCaPem, pinned_pem})
		if (!ts.add_pem({reinterpret_cast<const uint8_t *>(pem), std::strlen(pem)}, "fuzz").ok())
			abort();
	return ts;
}

struct TrustInput {
	uint32_t sig_alg = 0;
	std::vector<criusec::Der> chain;
	std::vector<uint8_t> signature;
};

inline TrustInput parse_trust_input(const uint8_t *p, size_t n)
{
	TrustInput in;
	size_t off = 0;
	for (int i = 0; i < 4 && off < n; i++)
		in.sig_alg = in.sig_alg << 8 | p[off++];
	unsigned count = off < n ? p[off++] : 0;
	for (unsigned i = 0; i < count && off + 2 <= n; i++) {
		size_t len = size_t(p[off]) << 8 | p[off + 1];
		off += 2;
		len = std::min(len, n - off);
		in.chain.emplace_back(p + off, p + off + len);
		off += len;
	}
	in.signature.assign(p + off, p + n);
	return in;
}

inline std::vector<uint8_t> serialize_trust_input(const TrustInput &in)
{
	std::vector<uint8_t> v;
	for (int s = 24; s >= 0; s -= 8)
		v.push_back(static_cast<uint8_t>(in.sig_alg >> s));
	v.push_back(static_cast<uint8_t>(in.chain.size()));
	for (const auto &der : in.chain) {
		v.push_back(static_cast<uint8_t>(der.size() >> 8));
		v.push_back(static_cast<uint8_t>(der.size()));
		v.insert(v.end(), der.begin(), der.end());
	}
	v.insert(v.end(), in.signature.begin(), in.signature.end());
	return v;
}

} /* namespace fuzz */
