/*
 * X.509 certificates as the engine uses them: DER and PEM, subjects,
 * validity at the caller's time and keyUsage, for signers (sign.cpp), the
 * trust store (trust.cpp) and recipients (ctx.cpp).  Everything through
 * GnuTLS (gnutls_x509_crt_*).
 */
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "gnutls_raii.h"
#include "status.h"

namespace criusec {

constexpr size_t kMaxSignerCerts = 8;
constexpr size_t kMaxCertLen = 16384;

using Der = std::vector<uint8_t>;

/* DER certificates of a PEM buffer, in order (1..kMaxSignerCerts). */
[[nodiscard]] Result<std::vector<Der>> certs_from_pem(std::span<const uint8_t> pem);
/* The subject DN of a DER certificate, RFC 4514 string ("CN=..., O=..."). */
[[nodiscard]] Result<std::string> cert_subject(std::span<const uint8_t> der);
/*
 * The leaf checks of section 10.4 steps 2 and 3 at time now (seconds
 * since the epoch): validity period and keyUsage digitalSignature.
 * Errors are EKEYREJECTED and name the certificate ("signer certificate
 * CN=... expired on ...").
 */
[[nodiscard]] Status check_signing_cert(std::span<const uint8_t> der, uint64_t now);
/*
 * The same for either use of a certificate: Sign (digitalSignature, as
 * above) or Encipher (a recipient: keyEncipherment).
 */
enum class CertUse { Sign, Encipher };
[[nodiscard]] Status check_cert_use(std::span<const uint8_t> der, uint64_t now, CertUse use);

/* Building blocks, for the signer and TrustStore too. */
/* One certificate (the first of a PEM buffer); a failure is err. */
[[nodiscard]] Result<X509Crt> crt_import(std::span<const uint8_t> data, gnutls_x509_crt_fmt_t fmt, int err);
/* One DER certificate of 1..kMaxCertLen bytes (EBADMSG otherwise). */
[[nodiscard]] Result<X509Crt> crt_from_der(std::span<const uint8_t> der);
[[nodiscard]] Result<std::string> crt_subject(gnutls_x509_crt_t crt);
[[nodiscard]] Result<Der> crt_der(gnutls_x509_crt_t crt);
/* The certificate's public key; err (EBADMSG: a damaged certificate) when it has none GnuTLS reads. */
[[nodiscard]] Result<PubKey> crt_pubkey(gnutls_x509_crt_t crt, int err = EBADMSG);
/* Every certificate of a PEM buffer (any number, possibly none). */
[[nodiscard]] Result<std::vector<X509Crt>> crts_from_pem(std::span<const uint8_t> pem);
/* notBefore <= now <= notAfter, else EKEYREJECTED naming who. */
[[nodiscard]] Status check_validity(gnutls_x509_crt_t crt, const std::string &who, uint64_t now);

/* t (seconds since the epoch) as "YYYY-MM-DD HH:MM:SS UTC", for messages. */
std::string utc_time(int64_t t);

} /* namespace criusec */
