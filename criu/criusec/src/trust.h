/*
 * Which signers a restore trusts (format 2, section 10.4): trusted
 * certificates from PEM files.  Every certificate is a pinned signer
 * (accepted when it is, byte for byte, the signer's certificate); the CA
 * certificates among them are also trust anchors for signer chains
 * (GnuTLS trust list).
 */
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "gnutls_raii.h"
#include "sign.h"
#include "status.h"

namespace criusec {

struct TrustVerdict {
	std::string signer; /* subject DN of the signer's certificate */
	std::string how;    /* "pinned", or "CA <subject DN of the anchor>" */
};

class TrustStore {
public:
	TrustStore();
	TrustStore(TrustStore &&) noexcept;
	TrustStore &operator=(TrustStore &&) noexcept;
	~TrustStore();

	/* Every certificate of a PEM buffer; origin (a path) names it in errors. */
	[[nodiscard]] Status add_pem(std::span<const uint8_t> pem, const std::string &origin);
	size_t size() const noexcept { return certs_.size(); }
	/* The subject DNs of the trusted certificates, for criu check. */
	std::vector<std::string> subjects() const;

	/*
	 * Section 10.4 at time now (seconds since the epoch): the chain
	 * (signer first) is trusted, or a Status (EKEYREJECTED) that says why
	 * not.  Every certificate of the chain and the anchor must be valid
	 * at now; GnuTLS's own clock is not used (see trust.cpp).
	 */
	[[nodiscard]] Result<TrustVerdict> verify(std::span<const Der> chain, uint64_t now) const;

private:
	[[nodiscard]] Result<std::string> find_anchor(const std::vector<X509Crt> &crts, std::span<const Der> chain,
						      const std::string &signer, uint64_t now) const;

	std::vector<Der> certs_;   /* every trusted certificate: the pins */
	std::vector<Der> ca_ders_; /* the CAs among them */
	TrustList cas_;            /* the same CAs, for GnuTLS (made with the first) */
};

} /* namespace criusec */
