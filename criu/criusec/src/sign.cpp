#include "sign.h"

#include "bytes.h"
#include "pki.h"

namespace criusec {

std::optional<SigAlg> sig_alg_from_wire(uint32_t v) noexcept
{
	switch (static_cast<SigAlg>(v)) {
	case SigAlg::None:
	case SigAlg::RsaPssSha256:
	case SigAlg::RsaPkcs1Sha256:
	case SigAlg::EcdsaP256Sha256:
	case SigAlg::EcdsaP384Sha384:
	case SigAlg::Ed25519:
		return static_cast<SigAlg>(v);
	}
	return std::nullopt;
}

const char *sig_alg_name(SigAlg a) noexcept
{
	switch (a) {
	case SigAlg::None:
		return "none";
	case SigAlg::RsaPssSha256:
		return "RSA-PSS-SHA256";
	case SigAlg::RsaPkcs1Sha256:
		return "RSA-PKCS1-SHA256";
	case SigAlg::EcdsaP256Sha256:
		return "ECDSA-P256-SHA256";
	case SigAlg::EcdsaP384Sha384:
		return "ECDSA-P384-SHA384";
	case SigAlg::Ed25519:
		return "Ed25519";
	}
	return "unknown";
}

namespace {

gnutls_sign_algorithm_t gnutls_sign_of(SigAlg a) noexcept
{
	switch (a) {
	case SigAlg::RsaPssSha256:
		return GNUTLS_SIGN_RSA_PSS_RSAE_SHA256;
	case SigAlg::RsaPkcs1Sha256:
		return GNUTLS_SIGN_RSA_SHA256;
	case SigAlg::EcdsaP256Sha256:
		return GNUTLS_SIGN_ECDSA_SHA256;
	case SigAlg::EcdsaP384Sha384:
		return GNUTLS_SIGN_ECDSA_SHA384;
	case SigAlg::Ed25519:
		return GNUTLS_SIGN_EDDSA_ED25519;
	case SigAlg::None:
		break;
	}
	return GNUTLS_SIGN_UNKNOWN;
}

/*
 * The algorithm a public key signs with (section 10.3): RSA >= 2048 bits
 * -> PSS, P-256, P-384, Ed25519.  Anything else has no sig_alg.
 */
Result<SigAlg> sig_alg_for_key(gnutls_pubkey_t pub)
{
	unsigned bits = 0;
	int pk = gnutls_pubkey_get_pk_algorithm(pub, &bits);
	switch (pk) {
	case GNUTLS_PK_RSA:
		if (bits < kMinRsaBits)
			return unsupported("RSA key has " + std::to_string(bits) + " bits, at least " +
					   std::to_string(kMinRsaBits) + " required to sign");
		return SigAlg::RsaPssSha256;
	case GNUTLS_PK_ECDSA: {
		gnutls_ecc_curve_t curve = GNUTLS_ECC_CURVE_INVALID;
		Datum x, y;
		int rc = gnutls_pubkey_export_ecc_raw2(pub, &curve, x.out(), y.out(), 0);
		if (rc < 0)
			return gnutls_status("EC public key", rc);
		if (curve == GNUTLS_ECC_CURVE_SECP256R1)
			return SigAlg::EcdsaP256Sha256;
		if (curve == GNUTLS_ECC_CURVE_SECP384R1)
			return SigAlg::EcdsaP384Sha384;
		const char *name = gnutls_ecc_curve_get_name(curve);
		return unsupported(std::string("EC curve ") + (name ? name : "unknown") +
				   " cannot sign checkpoints (P-256 and P-384 can)");
	}
	case GNUTLS_PK_EDDSA_ED25519:
		return SigAlg::Ed25519;
	default:
		break;
	}
	const char *name = pk > 0 ? gnutls_pk_get_name(static_cast<gnutls_pk_algorithm_t>(pk)) : nullptr;
	return unsupported(std::string(name ? name : "unknown") +
			   " keys cannot sign checkpoints (RSA, EC P-256/P-384 and Ed25519 can)");
}

/* Signs a probe (never a header: canonical2 starts "criusec-header-v2"). */
constexpr std::string_view kProbe = "criusec signing key probe";

Result<std::vector<uint8_t>> sign_with(gnutls_privkey_t key, SigAlg alg, std::span<const uint8_t> data, int *gnutls_rc)
{
	gnutls_datum_t d = as_datum(data.data(), data.size());
	Datum sig;
	int rc = gnutls_privkey_sign_data2(key, gnutls_sign_of(alg), 0, &d, sig.out());
	if (gnutls_rc)
		*gnutls_rc = rc;
	if (rc < 0)
		return gnutls_status((std::string("signing with ") + sig_alg_name(alg)).c_str(), rc);
	if (sig.size() == 0 || sig.size() > kMaxSignatureLen)
		return Status::error(EIO, "signature of unexpected length " + std::to_string(sig.size()));
	return std::vector<uint8_t>(sig.data(), sig.data() + sig.size());
}

/*
 * The ways GnuTLS says "this key cannot make that kind of signature": a
 * PKCS#11 key without CKM_RSA_PKCS_PSS gives the first, a token that
 * refuses the mechanism in C_Sign the PKCS#11 one.
 */
bool is_unsupported_alg(int rc) noexcept
{
	return rc == GNUTLS_E_UNSUPPORTED_SIGNATURE_ALGORITHM || rc == GNUTLS_E_PKCS11_UNSUPPORTED_FEATURE_ERROR ||
	       rc == GNUTLS_E_UNKNOWN_PK_ALGORITHM || rc == GNUTLS_E_UNIMPLEMENTED_FEATURE ||
	       rc == GNUTLS_E_INCOMPATIBLE_SIG_WITH_KEY;
}

} /* namespace */

Result<Signer> Signer::create(PrivKey key, std::span<const uint8_t> chain_pem, uint64_t now)
{
	if (!key)
		return invalid_argument("no signing key");
	auto chain = certs_from_pem(chain_pem);
	if (!chain.ok())
		return std::move(chain).status().with_context("signing certificate");
	CRIUSEC_TRY(check_signing_cert(chain.value()[0], now));

	auto leaf = crt_from_der(chain.value()[0]);
	if (!leaf.ok())
		return std::move(leaf).status();
	auto subject = crt_subject(leaf.value().get());
	if (!subject.ok())
		return std::move(subject).status();
	auto pub = crt_pubkey(leaf.value().get());
	if (!pub.ok())
		return std::move(pub).status();
	auto alg = sig_alg_for_key(pub.value().get());
	if (!alg.ok())
		return std::move(alg).status().with_context("signer certificate " + subject.value());

	/*
	 * Same public key, compared as DER SubjectPublicKeyInfo.  (A key that
	 * cannot export its public half, e.g. some external keys, is checked
	 * by the probe signature below instead.)
	 */
	auto mine = pubkey_from_privkey(key);
	if (mine.ok()) {
		auto a = fingerprint(mine.value());
		auto b = fingerprint(pub.value());
		if (!a.ok())
			return std::move(a).status();
		if (!b.ok())
			return std::move(b).status();
		if (a.value() != b.value())
			return invalid_argument("the signing key is not the key of its certificate " + subject.value());
	}

	/*
	 * sig_alg is part of the signed header, so the PSS -> PKCS#1 v1.5
	 * fallback (for tokens that cannot do PSS) is decided here, by a
	 * probe signature, before the caller builds what it signs.  The probe
	 * must also verify with the certificate's key.
	 */
	SigAlg chosen = alg.value();
	int rc = 0;
	auto probe = sign_with(key.get(), chosen, as_bytes(kProbe), &rc);
	if (!probe.ok() && chosen == SigAlg::RsaPssSha256 && is_unsupported_alg(rc)) {
		chosen = SigAlg::RsaPkcs1Sha256;
		probe = sign_with(key.get(), chosen, as_bytes(kProbe), nullptr);
	}
	if (!probe.ok())
		return std::move(probe).status();
	if (!verify_signature(chosen, chain.value()[0], as_bytes(kProbe), probe.value()).ok())
		return invalid_argument("the signing key is not the key of its certificate " + subject.value());

	Signer s;
	s.key_ = std::move(key);
	s.alg_ = chosen;
	s.chain_ = std::move(chain).value();
	s.subject_ = std::move(subject).value();
	return s;
}

Result<std::vector<uint8_t>> Signer::sign(std::span<const uint8_t> data)
{
	if (alg_ == SigAlg::None || !key_)
		return invalid_argument("signer not initialised");
	return sign_with(key_.get(), alg_, data, nullptr);
}

Status verify_signature(SigAlg alg, std::span<const uint8_t> leaf_der, std::span<const uint8_t> data,
			std::span<const uint8_t> sig)
{
	if (!sig_alg_from_wire(static_cast<uint32_t>(alg)) || alg == SigAlg::None)
		return bad_data("unknown signature algorithm " + std::to_string(static_cast<uint32_t>(alg)));
	if (sig.empty() || sig.size() > kMaxSignatureLen)
		return bad_data("signature of " + std::to_string(sig.size()) + " bytes (1.." +
				std::to_string(kMaxSignatureLen) + " allowed)");
	auto crt = crt_from_der(leaf_der);
	if (!crt.ok())
		return std::move(crt).status().with_context("signer certificate");
	auto pub = crt_pubkey(crt.value().get());
	if (!pub.ok())
		return std::move(pub).status().with_context("signer certificate");
	auto key_alg = sig_alg_for_key(pub.value().get());
	if (!key_alg.ok())
		return bad_data("signer certificate: " + key_alg.status().message());
	/* An RSA key makes both RSA kinds; every other key exactly one. */
	bool rsa_ok = key_alg.value() == SigAlg::RsaPssSha256 && alg == SigAlg::RsaPkcs1Sha256;
	if (alg != key_alg.value() && !rsa_ok)
		return bad_data(std::string("signature algorithm ") + sig_alg_name(alg) +
				" does not match the signer's key (" + sig_alg_name(key_alg.value()) + ")");

	gnutls_datum_t d = as_datum(data.data(), data.size());
	gnutls_datum_t s = as_datum(sig.data(), sig.size());
	int rc = gnutls_pubkey_verify_data2(pub.value().get(), gnutls_sign_of(alg), 0, &d, &s);
	if (rc < 0)
		return bad_data(std::string(sig_alg_name(alg)) + " signature does not verify: " + gnutls_strerror(rc));
	return {};
}

} /* namespace criusec */
