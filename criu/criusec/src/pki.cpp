#include "pki.h"

#include "io.h"
#include "kdf.h"
#include "pkcs11.h"

namespace criusec {

Result<X509Crt> crt_import(std::span<const uint8_t> data, gnutls_x509_crt_fmt_t fmt, int err)
{
	X509Crt crt;
	int rc = gnutls_x509_crt_init(crt.out());
	if (rc < 0)
		return gnutls_status("certificate", rc);
	gnutls_datum_t d = as_datum(data.data(), data.size());
	rc = gnutls_x509_crt_import(crt.get(), &d, fmt);
	if (rc < 0)
		return Status::error(err, std::string(fmt == GNUTLS_X509_FMT_PEM ? "not a PEM" : "not a DER") +
						  " X.509 certificate: " + gnutls_strerror(rc));
	return crt;
}

Result<PubKey> pubkey_from_cert_pem(std::span<const uint8_t> pem)
{
	auto crt = crt_import(pem, GNUTLS_X509_FMT_PEM, EINVAL);
	if (!crt.ok())
		return std::move(crt).status();

	PubKey pub;
	int rc = gnutls_pubkey_init(pub.out());
	if (rc < 0)
		return gnutls_status("public key", rc);
	rc = gnutls_pubkey_import_x509(pub.get(), crt.value().get(), 0);
	if (rc < 0)
		return Status::error(EINVAL, std::string("certificate public key: ") + gnutls_strerror(rc));

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

Status rsa_unwrap(const PrivKey &priv, std::span<const uint8_t> wrapped, std::span<uint8_t> out)
{
	gnutls_datum_t ct = as_datum(wrapped.data(), wrapped.size());
	int rc = gnutls_privkey_decrypt_data2(priv.get(), 0, &ct, out.data(), out.size());
	if (rc < 0)
		return bad_data("key unwrap failed");
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
