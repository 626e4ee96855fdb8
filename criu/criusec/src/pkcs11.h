/*
 * Private keys in a token (HSM, TPM through tpm2-pkcs11, SoftHSM) named by
 * a PKCS#11 URL (RFC 7512).  GnuTLS does the work: the key is a handle into
 * the token, every unwrap and signature happens there, and nothing of the
 * key is ever exported into this process.
 */
#pragma once

#include <string>
#include <string_view>

#include "gnutls_raii.h"
#include "status.h"

namespace criusec {

/* A key reference that is a PKCS#11 URL rather than a file path. */
bool is_pkcs11_url(std::string_view ref) noexcept;

/*
 * The reference as it may be logged or shown: a PKCS#11 URL without the
 * value of any pin-value attribute; a path unchanged.
 */
std::string key_ref_display(std::string_view ref);

/*
 * The private key a PKCS#11 URL names.  The PIN comes from the URL: a
 * pin-source attribute (a file holding the PIN, read when the token asks,
 * RFC 7512 section 2.3) or pin-value (the PIN itself).  Never prompts, and
 * never tries a PIN twice (tokens lock after a few wrong ones).  Errors
 * say which of these it was: no such token or key, a wrong PIN, no PIN.
 */
[[nodiscard]] Result<PrivKey> load_pkcs11_key(std::string_view url);

} /* namespace criusec */
