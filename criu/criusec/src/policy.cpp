#include "policy.h"

namespace criusec {

Status check_header(const HeaderView &hdr, const Policy &policy, uint64_t now, Verdict &v)
{
	v = Verdict{};
	CRIUSEC_TRY(check_structure(hdr));
	const bool have_trust = policy.trust && policy.trust->size() > 0;
	const bool protect = have_trust || policy.required;

	v.created = hdr.created;
	if (hdr.sig_alg != 0) {
		std::vector<Der> chain;
		for (const auto &c : hdr.signer_certs)
			chain.emplace_back(c.begin(), c.end());
		auto subject = cert_subject(chain.front());
		v.signer = subject.ok() ? subject.value() : "(unreadable certificate)";
		/* Whatever the policy: a signature that is there must be true. */
		auto st = verify_signature(*sig_alg_from_wire(hdr.sig_alg), chain.front(), canonical_header(hdr),
					   hdr.signature);
		if (!st.ok())
			return bad_data("cipher.img: the signature does not verify (a tampered header): " +
					st.message());
		v.is_signed = true;
		if (have_trust) {
			auto t = policy.trust->verify(chain, now);
			if (!t.ok()) {
				v.how = t.status().message();
				return std::move(t).status();
			}
			v.trusted = true;
			v.how = t.value().how;
		} else {
			v.how = "no trusted signers configured";
		}
	}

	if (protect && !v.is_signed)
		return rejected(hdr.version == kFormatVersion1
					? "cipher.img: the checkpoint is unsigned (format 1), and this host only "
					  "restores checkpoints signed by a trusted signer"
					: "cipher.img: the checkpoint is unsigned, and this host only restores "
					  "checkpoints signed by a trusted signer");
	if (protect && !have_trust)
		return rejected("cipher.img: signed by " + v.signer +
				", but no trusted signer is configured, and this host requires one");
	if (policy.max_age) {
		if (!v.is_signed)
			return rejected("cipher.img: the checkpoint is unsigned, so its age cannot be trusted "
					"(a maximum age is set)");
		if (hdr.created > now + kMaxClockSkew)
			return rejected("cipher.img: the checkpoint is dated " + utc_time(hdr.created) +
					", in the future");
		if (now > hdr.created && now - hdr.created > policy.max_age)
			return rejected("cipher.img: the checkpoint was made " + utc_time(hdr.created) + ", " +
					std::to_string(now - hdr.created) + " s ago, more than the maximum age (" +
					std::to_string(policy.max_age) + " s)");
	}
	return {};
}

} /* namespace criusec */
