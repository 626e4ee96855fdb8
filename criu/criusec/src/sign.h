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
#include "x509.h"

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

constexpr size_t kMaxSignatureLen = 16384;

std::optional<SigAlg> sig_alg_from_wire(uint32_t v) noexcept;
const char *sig_alg_name(SigAlg a) noexcept;

class Signer {
public:
	/*
	 * A private key (any of section 10.3's types) and its certificate
	 * chain (PEM, the signer's certificate first).  Checks that the first
	 * certificate's public key is the key's, that it may sign now
	 * (check_signing_cert), and picks sig_alg by the key type.  sig_alg is
	 * part of what is signed, so the PSS -> PKCS#1 v1.5 fallback for keys
	 * that cannot do PSS (hardware tokens) is decided here, by a probe
	 * signature that must also verify with the certificate's key.
	 */
	[[nodiscard]] static Result<Signer> create(PrivKey key, std::span<const uint8_t> chain_pem, uint64_t now);

	SigAlg alg() const noexcept { return alg_; }
	const std::vector<Der> &chain() const noexcept { return chain_; }
	const std::string &subject() const noexcept { return subject_; }

	/* sign(data) under alg(). */
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
 * under alg, which must match the key's type and curve (an RSA key: PSS or
 * PKCS#1 v1.5).  Every failure is EBADMSG (tampering).  No trust
 * decision, no validity or keyUsage check: see TrustStore.
 */
[[nodiscard]] Status verify_signature(SigAlg alg, std::span<const uint8_t> leaf_der, std::span<const uint8_t> data,
				      std::span<const uint8_t> sig);

} /* namespace criusec */
