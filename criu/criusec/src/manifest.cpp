#include "manifest.h"

#include <vector>

#include "bytes.h"

namespace criusec {

namespace {

constexpr size_t kMaxName = 255;

bool is_digit(char c, bool hex) noexcept
{
	return (c >= '0' && c <= '9') || (hex && c >= 'a' && c <= 'f');
}

/* Match pattern against name from the given positions; %s may need to backtrack. */
bool match(std::string_view p, std::string_view n) noexcept
{
	while (!p.empty()) {
		if (p[0] != '%' || (p.size() > 1 && p[1] == '%')) {
			if (n.empty() || n[0] != p[0])
				return false;
			size_t step = p[0] == '%' ? 2 : 1;
			p.remove_prefix(step);
			n.remove_prefix(1);
			continue;
		}
		size_t i = 1;
		while (i < p.size() && p[i] == 'l')
			i++;
		if (i >= p.size())
			return false;
		char conv = p[i];
		p.remove_prefix(i + 1);
		if (conv == 's') {
			for (size_t k = 1; k <= n.size(); k++)
				if (match(p, n.substr(k)))
					return true;
			return false;
		}
		if (conv != 'u' && conv != 'd' && conv != 'x')
			return false;
		size_t k = 0;
		if (conv == 'd' && !n.empty() && n[0] == '-')
			k = 1;
		size_t start = k;
		while (k < n.size() && is_digit(n[k], conv == 'x'))
			k++;
		if (k == start)
			return false;
		n.remove_prefix(k);
	}
	return n.empty();
}

} /* namespace */

bool name_matches(std::string_view pattern, std::string_view name) noexcept
{
	if (name.empty() || name.size() > kMaxName || name == "." || name == "..")
		return false;
	if (name.find('/') != std::string_view::npos || name.find('\0') != std::string_view::npos)
		return false;
	return match(pattern, name);
}

PagemapDigest::PagemapDigest(uint64_t pages_id)
{
	std::vector<uint8_t> head;
	put_str(head, "criusec-pagemap-v1");
	put_u8(head, 0);
	put_u64(head, pages_id);
	st_ = hash_.update(head);
}

Status PagemapDigest::add(uint64_t vaddr, uint32_t nr_pages, uint32_t flags)
{
	std::vector<uint8_t> e;
	e.reserve(16);
	put_u64(e, vaddr);
	put_u32(e, nr_pages);
	put_u32(e, flags);
	if (st_.ok())
		st_ = hash_.update(e);
	return st_;
}

Status PagemapDigest::finish(Digest &out)
{
	CRIUSEC_TRY(st_);
	return hash_.finish(out);
}

Status check_manifest(std::span<const ManifestEntry> m, bool v2, std::span<const ImageKind> kinds)
{
	constexpr std::string_view img = "cipher-manifest.img";

	for (const ManifestEntry &e : m) {
		const ImageKind *k = nullptr;
		for (const ImageKind &c : kinds)
			if (c.kind == e.kind)
				k = &c;
		if (!k || !name_matches(k->pattern, e.name))
			return bad_data(std::string(img) + ": \"" + std::string(e.name) +
					"\" is not an image name of the kind " + std::string(e.kind));
		bool digest_bad = v2 && e.digest.size() != kSha256Len && (!e.digest.empty() || e.size);
		bool entries_bad = !e.entries.empty() && (e.entries.size() != kSha256Len || !k->pagemap);
		if (digest_bad || entries_bad)
			return bad_data(std::string(img) + ": malformed entry for " + std::string(e.name));
	}
	return {};
}

} /* namespace criusec */
