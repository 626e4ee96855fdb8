#include "pki.h"

#include <cstring>

#include "io.h"
#include "kdf.h"
#include "pkcs11.h"
#include "x509.h"

namespace criusec {

Result<PubKey> pubkey_from_cert_pem(std::span<const uint8_t> pem)
{
	wipe_bignum_scratch(); /* wrapping pads the master key into a GMP number */
	auto crt = crt_import(pem, GNUTLS_X509_FMT_PEM, EINVAL);
	if (!crt.ok())
		return std::move(crt).status();

	auto key = crt_pubkey(crt.value().get(), EINVAL);
	if (!key.ok())
		return std::move(key).status();
	PubKey pub = std::move(key).value();

	unsigned bits = 0;
	if (gnutls_pubkey_get_pk_algorithm(pub.get(), &bits) != GNUTLS_PK_RSA)
		return unsupported("certificate key is not RSA (only RSA recipients are supported)");
	if (bits < kMinRsaBits)
		return invalid_argument("certificate RSA key has " + std::to_string(bits) + " bits, at least " +
					std::to_string(kMinRsaBits) + " required");
	return pub;
}

Result<PrivKey> privkey_load_pem(std::span<const uint8_t> pem)
{
	wipe_bignum_scratch(); /* before any operation with the key */
	PrivKey priv;
	int rc = gnutls_privkey_init(priv.out());
	if (rc < 0)
		return gnutls_status("private key", rc);
	gnutls_datum_t d = as_datum(pem.data(), pem.size());
	rc = gnutls_privkey_import_x509_raw(priv.get(), &d, GNUTLS_X509_FMT_PEM, nullptr, 0);
	if (rc < 0)
		return Status::error(EINVAL, std::string("cannot load PEM private key (password-protected keys are "
							 "not supported): ") +
						     gnutls_strerror(rc));
	return priv;
}

Status require_rsa(const PrivKey &priv)
{
	if (gnutls_privkey_get_pk_algorithm(priv.get(), nullptr) != GNUTLS_PK_RSA)
		return unsupported("private key is not RSA");
	return {};
}

Result<PrivKey> privkey_from_pem(std::span<const uint8_t> pem)
{
	auto priv = privkey_load_pem(pem);
	if (priv.ok())
		CRIUSEC_TRY(require_rsa(priv.value()));
	return priv;
}

Result<PubKey> pubkey_from_privkey(const PrivKey &priv)
{
	PubKey pub;
	int rc = gnutls_pubkey_init(pub.out());
	if (rc < 0)
		return gnutls_status("public key", rc);
	rc = gnutls_pubkey_import_privkey(pub.get(), priv.get(), 0, 0);
	if (rc < 0)
		return gnutls_status("public key of the private key", rc);
	return pub;
}

Result<Fingerprint> fingerprint(const PubKey &pub)
{
	Datum der;
	int rc = gnutls_pubkey_export2(pub.get(), GNUTLS_X509_FMT_DER, der.out());
	if (rc < 0)
		return gnutls_status("exporting public key", rc);
	Fingerprint fpr;
	CRIUSEC_TRY(sha256({der.data(), der.size()}, fpr));
	return fpr;
}

Result<std::vector<uint8_t>> rsa_wrap(const PubKey &pub, std::span<const uint8_t> key)
{
	gnutls_datum_t pt = as_datum(key.data(), key.size());
	Datum ct;
	int rc = gnutls_pubkey_encrypt_data(pub.get(), 0, &pt, ct.out());
	if (rc < 0)
		return gnutls_status("RSA key wrap", rc);
	return std::vector<uint8_t>(ct.data(), ct.data() + ct.size());
}

namespace {

constexpr std::string_view kRejectionKeyMsg = "criusec v1 implicit rejection key";

/*
 * The rejection key.  From the private exponent where the key lets us read
 * it (a file key): HMAC-SHA-256 keyed with d, as RSA implicit-rejection
 * guidance derives its key-derivation key, without a second private-key
 * operation per unwrap (one RSA-3072 signature is ~5 ms of every restore).
 * A key in a token keeps d: SHA-256 over a PKCS#1 v1.5 signature of the
 * same fixed message, deterministic too.  Either way the same for every
 * unwrap with that key, valid padding or not.
 */
Result<SecureBytes> rejection_key(const PrivKey &priv)
{
	SecureBytes k(kSha256Len);
	gnutls_datum_t msg = as_datum(kRejectionKeyMsg.data(), kRejectionKeyMsg.size());
	SecretDatum d;
	if (gnutls_privkey_export_rsa_raw2(priv.get(), nullptr, nullptr, d.out(), nullptr, nullptr, nullptr, nullptr,
					   nullptr, GNUTLS_EXPORT_FLAG_NO_LZ) == 0 &&
	    d.size() > 0) {
		CRIUSEC_TRY(hmac_sha256({d.data(), d.size()}, {static_cast<const uint8_t *>(msg.data), msg.size},
					std::span<uint8_t, kSha256Len>(k.data(), kSha256Len)));
		return k;
	}
	SecretDatum sig;
	if (gnutls_privkey_sign_data(priv.get(), GNUTLS_DIG_SHA256, 0, &msg, sig.out()) == 0) {
		CRIUSEC_TRY(sha256({sig.data(), sig.size()}, std::span<uint8_t, kSha256Len>(k.data(), kSha256Len)));
		return k;
	}
	static SecureBytes process_key = [] {
		SecureBytes r(kSha256Len);
		(void)random_bytes(r.span());
		return r;
	}();
	std::memcpy(k.data(), process_key.data(), kSha256Len);
	return k;
}

} /* namespace */

Status rsa_unwrap_implicit(const PrivKey &priv, std::span<const uint8_t> wrapped, std::span<uint8_t> out)
{
	if (out.size() > kSha256Len)
		return invalid_argument("implicit rejection covers keys of at most 32 bytes");
	auto rk = rejection_key(priv);
	if (!rk.ok())
		return std::move(rk).status();
	Digest substitute;
	CRIUSEC_TRY(hmac_sha256(rk.value().span(), wrapped, substitute));

	SecureBytes unwrapped(out.size());
	gnutls_datum_t ct = as_datum(wrapped.data(), wrapped.size());
	int rc = gnutls_privkey_decrypt_data2(priv.get(), 0, &ct, unwrapped.data(), unwrapped.size());
	/* All ones when rc == 0, else all zeros: from the sign bit, no branch. */
	uint8_t ok = static_cast<uint8_t>(((static_cast<uint32_t>(rc) | static_cast<uint32_t>(-rc)) >> 31) - 1);
	for (size_t i = 0; i < out.size(); i++)
		out[i] = static_cast<uint8_t>((unwrapped.data()[i] & ok) | (substitute[i] & ~ok));
	gnutls_memset(substitute.data(), 0, substitute.size());
	return {};
}

Result<PrivKey> load_private_key(std::string_view ref)
{
	if (is_pkcs11_url(ref))
		return load_pkcs11_key(ref);
	/* Certificates and keys are a few KiB; anything near this is not one. */
	constexpr size_t kMaxKeyFile = 1 << 20;
	std::string path(ref);
	auto pem = read_small_file(path.c_str(), kMaxKeyFile);
	if (!pem.ok())
		return std::move(pem).status();
	return privkey_load_pem(pem.value().span());
}

} /* namespace criusec */
