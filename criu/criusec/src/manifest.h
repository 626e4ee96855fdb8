/*
 * What the manifest of a checkpoint records beyond the streams themselves
 * (Documentation/criusec-format.md, section 10.6): the names images of a
 * kind may have, and the digest of a pagemap's entries.
 */
#pragma once

#include <cstdint>
#include <span>
#include <string_view>

#include "kdf.h"
#include "status.h"

namespace criusec {

/*
 * Whether name is a plain file name (no '/', not "." or "..", at most 255
 * bytes) that the printf-style pattern of an image kind produces: "%u",
 * "%d", "%lu", "%ld" match decimal digits (a '-' first for the signed
 * ones), "%x" and "%lx" lowercase hex digits, "%s" one or more characters,
 * "%%" a '%'; anything else must be equal.
 */
bool name_matches(std::string_view pattern, std::string_view name) noexcept;

/* An image kind of the writer's (CRIU's) table: the names of its images, and whether it is a pagemap. */
struct ImageKind {
	std::string_view kind;
	std::string_view pattern;
	bool pagemap = false;
};

/* One entry of a manifest, as read from cipher-manifest.img. */
struct ManifestEntry {
	std::string_view kind;
	std::string_view name;
	uint64_t size = 0;
	std::span<const uint8_t> digest;  /* format 2: empty for an image a page server sealed */
	std::span<const uint8_t> entries; /* a page server's pagemap: the digest of what it was sent */
};

/*
 * The manifest's rules (section 10.6): every name a plain file name of
 * its kind, the kind one of the writer's (kinds); in format 2 (v2) a
 * digest of its length, or none with size 0; an entries digest only for
 * a pagemap.  Errors name cipher-manifest.img and the entry.
 */
[[nodiscard]] Status check_manifest(std::span<const ManifestEntry> m, bool v2, std::span<const ImageKind> kinds);

/*
 * SHA-256 over the entries of a pagemap image:
 *   "criusec-pagemap-v1" || 0x00 || u64(pages_id)
 *   || for each entry, in order: u64(vaddr) || u32(nr_pages) || u32(flags)
 */
class PagemapDigest {
public:
	explicit PagemapDigest(uint64_t pages_id);
	[[nodiscard]] Status add(uint64_t vaddr, uint32_t nr_pages, uint32_t flags);
	[[nodiscard]] Status finish(Digest &out);

private:
	Sha256 hash_;
	Status st_;
};

} /* namespace criusec */
