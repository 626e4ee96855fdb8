/*
 * Signatures over the cipher.img header (format 2, section 10 of
 * Documentation/criusec-format.md): the dumping host's signing key and
 * certificate chain, and verification of a signature with the public key
 * of the first certificate of a chain.  Everything through GnuTLS
 * (gnutls_privkey_sign_data2, gnutls_pubkey_verify_data2).
 */
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "gnutls_raii.h"
#include "status.h"

namespace criusec {

/* Wire values of cipher.img's sig_alg (part of the format). */
enum class SigAlg : uint32_t {
	None = 0,
	RsaPssSha256 = 1,
	RsaPkcs1Sha256 = 2,
	EcdsaP256Sha256 = 3,
	EcdsaP384Sha384 = 4,
	Ed25519 = 5,
};

constexpr size_t kMaxSignerCerts = 8;
constexpr size_t kMaxCertLen = 16384;
constexpr size_t kMaxSignatureLen = 16384;

std::optional<SigAlg> sig_alg_from_wire(uint32_t v) noexcept;
const char *sig_alg_name(SigAlg a) noexcept;

using Der = std::vector<uint8_t>;

/* DER certificates of a PEM buffer, in order (1..kMaxSignerCerts). */
[[nodiscard]] Result<std::vector<Der>> certs_from_pem(std::span<const uint8_t> pem);
/* The subject DN of a DER certificate, RFC 4514 string ("CN=..., O=..."). */
[[nodiscard]] Result<std::string> cert_subject(std::span<const uint8_t> der);
/*
 * The leaf checks of section 10.4 steps 2 and 3 at time now (seconds
 * since the epoch): validity period and keyUsage digitalSignature.
 * what names the certificate in the error ("signer certificate CN=...").
 */
[[nodiscard]] Status check_signing_cert(std::span<const uint8_t> der, uint64_t now);

class Signer {
public:
	/*
	 * A private key (any of section 10.3's types) and its certificate
	 * chain (PEM, the signer's certificate first).  Checks that the first
	 * certificate's public key is the key's, that it may sign now
	 * (check_signing_cert), and picks sig_alg by the key type.
	 */
	[[nodiscard]] static Result<Signer> create(PrivKey key, std::span<const uint8_t> chain_pem, uint64_t now);

	SigAlg alg() const noexcept { return alg_; }
	const std::vector<Der> &chain() const noexcept { return chain_; }
	const std::string &subject() const noexcept { return subject_; }

	/* sign(data) under alg(); falls back from PSS to PKCS#1 v1.5 only if the key cannot do PSS. */
	[[nodiscard]] Result<std::vector<uint8_t>> sign(std::span<const uint8_t> data);

private:
	Signer() = default;
	PrivKey key_;
	SigAlg alg_ = SigAlg::None;
	std::vector<Der> chain_;
	std::string subject_;
};

/*
 * Verify sig over data with the public key of the DER certificate leaf,
 * under alg, which must match the key's type and curve.  No trust
 * decision: see TrustStore.
 */
[[nodiscard]] Status verify_signature(SigAlg alg, std::span<const uint8_t> leaf_der, std::span<const uint8_t> data,
				      std::span<const uint8_t> sig);

} /* namespace criusec */
