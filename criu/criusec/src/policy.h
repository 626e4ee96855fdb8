/*
 * What a reader requires of a checkpoint's header before any key is used
 * (Documentation/criusec-format.md, sections 10.7 and 10.8): the header's
 * structure, its signature, and the restore policy (trusted signers,
 * "protection required", maximum age).
 */
#pragma once

#include <cstdint>
#include <string>

#include "ctx.h"
#include "status.h"
#include "trust.h"

namespace criusec {

struct Policy {
	const TrustStore *trust = nullptr; /* null or empty: no trust configured */
	bool required = false;		   /* only trusted, signed checkpoints */
	uint64_t max_age = 0;		   /* seconds; 0: any age */
};

struct Verdict {
	bool is_signed = false; /* the signature verified over the header */
	bool trusted = false;
	uint64_t created = 0;
	std::string signer; /* subject of the signer's certificate */
	std::string how;    /* "pinned", "CA ...", or why it is not trusted */
};

/* A checkpoint dated further ahead than this is refused under a maximum age. */
constexpr uint64_t kMaxClockSkew = 300;

/*
 * EBADMSG: damaged header or false signature (refused under any policy);
 * EKEYREJECTED: the policy refuses it (unsigned, untrusted, too old).
 * v says what was found so far, on failure too (who signed, for the hint).
 */
[[nodiscard]] Status check_header(const HeaderView &hdr, const Policy &policy, uint64_t now, Verdict &v);

} /* namespace criusec */
