#include "x509.h"

#include <ctime>

namespace criusec {

std::string utc_time(int64_t t)
{
	time_t tt = static_cast<time_t>(t);
	struct tm tm;
	char buf[64];
	if (!gmtime_r(&tt, &tm) || !strftime(buf, sizeof(buf), "%Y-%m-%d %H:%M:%S UTC", &tm))
		return std::to_string(static_cast<long long>(t)) + " (seconds since the epoch)";
	return buf;
}

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

Result<X509Crt> crt_from_der(std::span<const uint8_t> der)
{
	if (der.empty() || der.size() > kMaxCertLen)
		return bad_data("certificate of " + std::to_string(der.size()) + " bytes (1.." +
				std::to_string(kMaxCertLen) + " allowed)");
	return crt_import(der, GNUTLS_X509_FMT_DER, EBADMSG);
}

Result<std::string> crt_subject(gnutls_x509_crt_t crt)
{
	Datum dn;
	int rc = gnutls_x509_crt_get_dn3(crt, dn.out(), 0);
	if (rc == GNUTLS_E_REQUESTED_DATA_NOT_AVAILABLE)
		return std::string("(empty subject)");
	if (rc < 0)
		return bad_data(std::string("certificate subject: ") + gnutls_strerror(rc));
	return std::string(reinterpret_cast<const char *>(dn.data()), dn.size());
}

Status check_validity(gnutls_x509_crt_t crt, const std::string &who, uint64_t now)
{
	time_t not_before = gnutls_x509_crt_get_activation_time(crt);
	time_t not_after = gnutls_x509_crt_get_expiration_time(crt);
	if (not_before == static_cast<time_t>(-1))
		return Status::error(EKEYREJECTED, who + " has no readable validity period (notBefore)");
	/* -1 here is RFC 5280's 99991231235959Z: no well-defined expiration. */
	int64_t t = now > static_cast<uint64_t>(INT64_MAX) ? INT64_MAX : static_cast<int64_t>(now);
	if (t < static_cast<int64_t>(not_before))
		return Status::error(EKEYREJECTED,
				     who + " is not yet valid: valid from " + utc_time(not_before) + " (notBefore)");
	if (not_after != static_cast<time_t>(-1) && t > static_cast<int64_t>(not_after))
		return Status::error(EKEYREJECTED, who + " expired on " + utc_time(not_after) + " (notAfter)");
	return {};
}

Result<std::vector<X509Crt>> crts_from_pem(std::span<const uint8_t> pem)
{
	gnutls_x509_crt_t *list = nullptr;
	unsigned n = 0;
	gnutls_datum_t d = as_datum(pem.data(), pem.size());
	int rc = gnutls_x509_crt_list_import2(&list, &n, &d, GNUTLS_X509_FMT_PEM, 0);
	if (rc < 0)
		return invalid_argument(std::string("not PEM X.509 certificates: ") + gnutls_strerror(rc));
	std::vector<X509Crt> crts(n);
	for (unsigned i = 0; i < n; i++)
		*crts[i].out() = list[i];
	gnutls_free(list);
	return crts;
}

Result<PubKey> crt_pubkey(gnutls_x509_crt_t crt, int err)
{
	PubKey pub;
	int rc = gnutls_pubkey_init(pub.out());
	if (rc < 0)
		return gnutls_status("public key", rc);
	rc = gnutls_pubkey_import_x509(pub.get(), crt, 0);
	if (rc < 0)
		return Status::error(err, std::string("certificate public key: ") + gnutls_strerror(rc));
	return pub;
}

Result<Der> crt_der(gnutls_x509_crt_t crt)
{
	Datum der;
	int rc = gnutls_x509_crt_export2(crt, GNUTLS_X509_FMT_DER, der.out());
	if (rc < 0)
		return gnutls_status("exporting certificate", rc);
	return Der(der.data(), der.data() + der.size());
}

Result<std::vector<Der>> certs_from_pem(std::span<const uint8_t> pem)
{
	auto crts = crts_from_pem(pem);
	if (!crts.ok())
		return std::move(crts).status();
	size_t n = crts.value().size();
	if (n == 0 || n > kMaxSignerCerts)
		return invalid_argument("certificate chain of " + std::to_string(n) + " certificates (1.." +
					std::to_string(kMaxSignerCerts) + " allowed)");
	std::vector<Der> ders;
	for (size_t i = 0; i < n; i++) {
		auto der = crt_der(crts.value()[i].get());
		if (!der.ok())
			return std::move(der).status();
		if (der.value().size() > kMaxCertLen)
			return invalid_argument("certificate " + std::to_string(i + 1) + " of the chain has " +
						std::to_string(der.value().size()) + " bytes (at most " +
						std::to_string(kMaxCertLen) + " allowed)");
		ders.push_back(std::move(der).value());
	}
	return ders;
}

Result<std::string> cert_subject(std::span<const uint8_t> der)
{
	auto crt = crt_from_der(der);
	if (!crt.ok())
		return std::move(crt).status();
	return crt_subject(crt.value().get());
}

Status check_cert_use(std::span<const uint8_t> der, uint64_t now, CertUse use)
{
	const bool sign = use == CertUse::Sign;
	const char *role = sign ? "signer certificate" : "recipient certificate";
	auto crt = crt_from_der(der);
	if (!crt.ok())
		return Status::error(EKEYREJECTED, std::string(role) + ": " + crt.status().message());
	auto subject = crt_subject(crt.value().get());
	if (!subject.ok())
		return Status::error(EKEYREJECTED, std::string(role) + ": " + subject.status().message());
	std::string who = role + std::string(" ") + subject.value();
	CRIUSEC_TRY(check_validity(crt.value().get(), who, now));

	unsigned usage = 0, critical = 0;
	int rc = gnutls_x509_crt_get_key_usage(crt.value().get(), &usage, &critical);
	if (rc == GNUTLS_E_REQUESTED_DATA_NOT_AVAILABLE)
		return {}; /* no keyUsage extension: any use */
	if (rc < 0)
		return Status::error(EKEYREJECTED, who + ": unreadable keyUsage: " + gnutls_strerror(rc));
	if (sign && !(usage & GNUTLS_KEY_DIGITAL_SIGNATURE))
		return Status::error(EKEYREJECTED, who + " is not allowed to sign (keyUsage lacks digitalSignature)");
	if (!sign && !(usage & GNUTLS_KEY_KEY_ENCIPHERMENT))
		return Status::error(EKEYREJECTED,
				     who + " is not allowed to receive wrapped keys (keyUsage lacks keyEncipherment)");
	return {};
}

Status check_signing_cert(std::span<const uint8_t> der, uint64_t now)
{
	return check_cert_use(der, now, CertUse::Sign);
}

} /* namespace criusec */
