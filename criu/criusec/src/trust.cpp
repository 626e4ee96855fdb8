/*
 * Time: the caller's now decides validity, never GnuTLS's clock.  GnuTLS
 * verifies the chain's signatures and CA constraints with its time checks
 * off (GNUTLS_VERIFY_DISABLE_TIME_CHECKS and ..._TRUSTED_TIME_CHECKS); we
 * then check every certificate of the chain and the anchor it leads to
 * against now ourselves.  So one clock (the reader's, or a test's) applies
 * to the whole decision, and tests need no global time hook.
 */
#include "trust.h"

#include <algorithm>

namespace criusec {

namespace {

constexpr unsigned kVerifyFlags = GNUTLS_VERIFY_DISABLE_TIME_CHECKS | GNUTLS_VERIFY_DISABLE_TRUSTED_TIME_CHECKS |
				  GNUTLS_VERIFY_DO_NOT_ALLOW_UNSORTED_CHAIN; /* section 10.4: each signed by the next */

bool contains(const std::vector<Der> &v, std::span<const uint8_t> der)
{
	return std::any_of(v.begin(), v.end(),
			   [&](const Der &d) { return std::equal(d.begin(), d.end(), der.begin(), der.end()); });
}

bool is_ca(gnutls_x509_crt_t crt)
{
	unsigned critical = 0, ca = 0;
	int pathlen = -1;
	return gnutls_x509_crt_get_basic_constraints(crt, &critical, &ca, &pathlen) >= 0 && ca;
}

std::string subject_or(gnutls_x509_crt_t crt, const char *fallback)
{
	auto s = crt_subject(crt);
	return s.ok() ? s.value() : fallback;
}

std::string status_text(unsigned status)
{
	Datum out;
	if (gnutls_certificate_verification_status_print(status, GNUTLS_CRT_X509, out.out(), 0) < 0)
		return "status " + std::to_string(status);
	std::string s(reinterpret_cast<const char *>(out.data()), out.size());
	while (!s.empty() && (s.back() == ' ' || s.back() == '\n'))
		s.pop_back();
	return s;
}

} /* namespace */

TrustStore::TrustStore() = default;
TrustStore::TrustStore(TrustStore &&) noexcept = default;
TrustStore &TrustStore::operator=(TrustStore &&) noexcept = default;
TrustStore::~TrustStore() = default;

Status TrustStore::add_pem(std::span<const uint8_t> pem, const std::string &origin)
{
	auto crts = crts_from_pem(pem);
	if (!crts.ok())
		return std::move(crts).status().with_context(origin);
	if (crts.value().empty())
		return invalid_argument(origin + ": no certificate found");

	/* Check them all before keeping any: a file is taken whole or not at all. */
	std::vector<Der> ders;
	for (auto &crt : crts.value()) {
		auto der = crt_der(crt.get());
		if (!der.ok())
			return std::move(der).status().with_context(origin);
		ders.push_back(std::move(der).value());
	}
	if (!cas_) {
		int rc = gnutls_x509_trust_list_init(cas_.out(), 0);
		if (rc < 0)
			return gnutls_status("trust list", rc);
	}
	for (size_t i = 0; i < ders.size(); i++) {
		if (contains(certs_, ders[i]))
			continue;
		certs_.push_back(ders[i]);
		if (!is_ca(crts.value()[i].get()))
			continue;
		gnutls_x509_crt_t raw = crts.value()[i].release();
		if (gnutls_x509_trust_list_add_cas(cas_.get(), &raw, 1, 0) != 1) {
			gnutls_x509_crt_deinit(raw); /* not taken by the list */
			certs_.pop_back();
			return Status::error(ENOMEM, origin + ": cannot add a CA to the trust list");
		}
		ca_ders_.push_back(ders[i]);
	}
	return {};
}

std::vector<std::string> TrustStore::subjects() const
{
	std::vector<std::string> out;
	for (const auto &der : certs_) {
		auto s = cert_subject(der);
		out.push_back(s.ok() ? s.value() : "(unreadable certificate)");
	}
	return out;
}

Result<TrustVerdict> TrustStore::verify(std::span<const Der> chain, uint64_t now) const
{
	if (certs_.empty())
		return rejected("no trusted signer: the trust store is empty");
	if (chain.empty())
		return rejected("the checkpoint names no signer certificate");
	if (chain.size() > kMaxSignerCerts)
		return rejected("signer chain of " + std::to_string(chain.size()) + " certificates (at most " +
				std::to_string(kMaxSignerCerts) + ")");
	std::vector<X509Crt> crts;
	for (size_t i = 0; i < chain.size(); i++) {
		auto crt = crt_from_der(chain[i]);
		if (!crt.ok())
			return rejected("certificate " + std::to_string(i + 1) +
					" of the signer chain: " + crt.status().message());
		crts.push_back(std::move(crt).value());
	}
	TrustVerdict v;
	v.signer = subject_or(crts[0].get(), "(unreadable subject)");

	if (contains(certs_, chain[0])) {
		CRIUSEC_TRY(check_signing_cert(chain[0], now));
		v.how = "pinned";
		return v;
	}
	if (ca_ders_.empty())
		return rejected("signer " + v.signer + " is not trusted: it is none of the " +
				std::to_string(certs_.size()) + " trusted certificates, and none of them is a CA");

	std::vector<gnutls_x509_crt_t> raw;
	for (const auto &c : crts)
		raw.push_back(c.get());
	unsigned status = 0;
	int rc = gnutls_x509_trust_list_verify_crt2(cas_.get(), raw.data(), static_cast<unsigned>(raw.size()), nullptr,
						    0, kVerifyFlags, &status, nullptr);
	if (rc < 0)
		return rejected("signer " + v.signer +
				" is not trusted: chain verification failed (GnuTLS: " + gnutls_strerror(rc) + ")");
	if (status)
		return rejected("signer " + v.signer +
				" is not trusted: its chain does not lead to a trusted CA (GnuTLS: " +
				status_text(status) + ")");

	auto anchor = find_anchor(crts, chain, v.signer, now);
	if (!anchor.ok())
		return std::move(anchor).status();
	CRIUSEC_TRY(check_signing_cert(chain[0], now));
	for (size_t i = 1; i < crts.size(); i++)
		CRIUSEC_TRY(check_validity(crts[i].get(),
					   "certificate " + subject_or(crts[i].get(), "(unreadable subject)") +
						   " of signer " + v.signer + "'s chain",
					   now));
	v.how = "CA " + anchor.value();
	return v;
}

/*
 * GnuTLS does not say which anchor it used, and it ignores certificates
 * after the first that a trusted CA signed.  So: the path ends at the
 * first certificate after the signer's that is itself a trusted CA (the
 * anchor), or at the nearest certificate that a trusted CA's signature
 * verifies; after it the chain may hold only trusted CAs (e.g. a copy of
 * the anchor), nothing unverified (section 10.4: each certificate signed
 * by the next, the last by the CA).
 * Of several such CAs (a renewed CA certificate with the same key), one
 * valid at now is enough.  Returns the anchor's subject.
 */
Result<std::string> TrustStore::find_anchor(const std::vector<X509Crt> &crts, std::span<const Der> chain,
					    const std::string &signer, uint64_t now) const
{
	for (size_t i = 0; i < crts.size(); i++) {
		Status invalid;
		for (const auto &ca_der : ca_ders_) {
			auto ca = crt_from_der(ca_der);
			if (!ca.ok())
				return std::move(ca).status();
			size_t path_end = i + 1; /* chain[0..path_end) is the path below the anchor */
			bool anchor = false;
			if (i > 0 && std::equal(ca_der.begin(), ca_der.end(), chain[i].begin(), chain[i].end())) {
				anchor = true;
				path_end = i;
			} else if (gnutls_x509_crt_check_issuer(crts[i].get(), ca.value().get())) {
				gnutls_x509_crt_t list[1] = {ca.value().get()};
				unsigned status = 0;
				anchor = gnutls_x509_crt_verify(crts[i].get(), list, 1, kVerifyFlags, &status) >= 0 &&
					 status == 0;
			}
			if (!anchor)
				continue;
			for (size_t j = path_end; j < chain.size(); j++)
				if (!contains(ca_ders_, chain[j]))
					return rejected("signer " + signer + " is not trusted: certificate " +
							std::to_string(j + 1) +
							" of its chain is not on its path to the trusted CA");
			std::string subject = subject_or(ca.value().get(), "(unreadable subject)");
			Status st = check_validity(ca.value().get(), "trusted CA " + subject, now);
			if (st.ok())
				return subject;
			if (invalid.ok())
				invalid = std::move(st);
		}
		if (!invalid.ok())
			return invalid;
	}
	return rejected("signer " + signer + " is not trusted: no trusted CA found for its chain");
}

} /* namespace criusec */
