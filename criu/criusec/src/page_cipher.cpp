#include "page_cipher.h"

#include <algorithm>
#include <array>
#include <cstdio>
#include <string>
#include <vector>

#include "bytes.h"
#include "kdf.h"
#include "secure_bytes.h"

namespace criusec {

namespace {

constexpr size_t kIdentityLen = 16;

std::array<uint8_t, kIdentityLen> identity(uint64_t vaddr, uint64_t index) noexcept
{
	std::array<uint8_t, kIdentityLen> id{};
	for (size_t b = 0; b < 8; b++) {
		id[b] = static_cast<uint8_t>(vaddr >> (8 * b));
		id[8 + b] = static_cast<uint8_t>(index >> (8 * b));
	}
	return id;
}

Result<SecureBytes> page_key(const Ctx &ctx, std::string_view label, std::string_view name, size_t len)
{
	std::vector<uint8_t> info;
	put_str(info, label);
	put_u8(info, 0);
	put_str(info, name);
	return ctx.derive(info, len);
}

} /* namespace */

std::string page_name(uint64_t vaddr, uint64_t index)
{
	char buf[64];
	std::snprintf(buf, sizeof(buf), "page %llu (vaddr 0x%llx)", static_cast<unsigned long long>(index),
		      static_cast<unsigned long long>(vaddr));
	return buf;
}

Status check_pages(std::span<const uint8_t> pages, std::span<const uint8_t> tags)
{
	if (pages.size() % kPageSize)
		return invalid_argument("page data must be whole 4096-byte pages");
	if (tags.size() != pages.size() / kPageSize * kPageTagLen)
		return invalid_argument("one 16-byte tag per page");
	return {};
}


Result<PageCipher> PageCipher::create(const Ctx &ctx, std::string_view image_name)
{
	if (image_name.empty() || image_name.find('\0') != std::string_view::npos)
		return invalid_argument("bad page image name");
	auto xk = page_key(ctx, kInfoPagesXts, image_name, Xts::kKeyLen);
	if (!xk.ok())
		return std::move(xk).status();
	auto xts = Xts::create(xk.value().span());
	if (!xts.ok())
		return std::move(xts).status();
	auto tk = page_key(ctx, kInfoPagesTag, image_name, kAeadKeyLen);
	if (!tk.ok())
		return std::move(tk).status();
	gnutls_datum_t k = as_datum(tk.value().span().data(), tk.value().span().size());
	AeadHandle h;
	int rc = gnutls_aead_cipher_init(h.out(), GNUTLS_CIPHER_AES_256_GCM, &k);
	if (rc < 0)
		return gnutls_status("AES-256-GCM (page tags)", rc);
	PageCipher c(std::move(xts).value(), std::move(h));
	if (ctx.compress() == CompressAlg::None)
		return c;
	auto rk = page_key(ctx, kInfoPagesRegion, image_name, kAeadKeyLen);
	if (!rk.ok())
		return std::move(rk).status();
	auto aead = Aead::create(ctx.aead(), rk.value().span());
	if (!aead.ok())
		return std::move(aead).status();
	auto codec = BlockCodec::create(ctx.compress());
	if (!codec.ok())
		return std::move(codec).status();
	c.region_.emplace(std::move(aead).value());
	c.codec_.emplace(std::move(codec).value());
	c.id_ = ctx.id();
	c.name_ = image_name;
	return c;
}

namespace {

constexpr std::string_view kRegionTag = "criusec-region-v1";

/* u88(r) || 0x00 */
std::array<uint8_t, kAeadNonceLen> region_nonce(uint64_t r) noexcept
{
	std::array<uint8_t, kAeadNonceLen> n{};
	for (size_t b = 0; b < 8; b++)
		n[10 - b] = static_cast<uint8_t>(r >> (8 * b));
	return n;
}

} /* namespace */

std::string region_name(uint64_t r, uint64_t vaddr, uint64_t first, size_t nr)
{
	char buf[128];
	std::snprintf(buf, sizeof(buf), "region %llu (pages %llu-%llu, vaddr 0x%llx)", static_cast<unsigned long long>(r),
		      static_cast<unsigned long long>(first), static_cast<unsigned long long>(first + nr - 1),
		      static_cast<unsigned long long>(vaddr));
	return buf;
}


std::vector<uint8_t> PageCipher::region_aad(uint64_t vaddr, uint64_t first, size_t nr) const
{
	std::vector<uint8_t> aad;
	aad.reserve(kRegionTag.size() + 1 + kIdLen + 8 + 8 + 4 + 4 + name_.size());
	put_str(aad, kRegionTag);
	put_u8(aad, 0);
	put_bytes(aad, id_);
	put_u64(aad, vaddr);
	put_u64(aad, first);
	put_u32(aad, static_cast<uint32_t>(nr));
	put_u32(aad, static_cast<uint32_t>(codec_->alg()));
	put_str(aad, name_);
	return aad;
}

Result<size_t> PageCipher::seal_region(uint64_t r, uint64_t vaddr, uint64_t first, std::span<const uint8_t> pages,
				       std::span<uint8_t> out)
{
	if (!region_)
		return invalid_argument("this checkpoint does not compress");
	if (pages.empty() || pages.size() % kPageSize || pages.size() > kMaxCompressBlock)
		return invalid_argument("a region is 1.." + std::to_string(kMaxRegionPages) + " whole pages");
	/* Stored compressed only when that is shorter than the pages themselves. */
	size_t limit = std::min(out.size(), pages.size() - 1);
	if (limit <= kAeadTagLen)
		return size_t{0};
	if (scratch_.size() < kMaxCompressBlock)
		scratch_ = SecureBytes(kMaxCompressBlock);
	auto n = codec_->compress(pages, scratch_.span().first(limit - kAeadTagLen));
	if (!n.ok() || n.value() == 0)
		return n;
	auto aad = region_aad(vaddr, first, pages.size() / kPageSize);
	CRIUSEC_TRY(region_->seal(region_nonce(r), aad, scratch_.span().first(n.value()),
				  out.first(n.value() + kAeadTagLen)));
	return n.value() + kAeadTagLen;
}

Status PageCipher::seal_raw_region_for_testing(uint64_t r, uint64_t vaddr, uint64_t first, size_t nr,
					       std::span<const uint8_t> compressed, std::span<uint8_t> out)
{
	if (!region_ || out.size() != compressed.size() + kAeadTagLen)
		return invalid_argument("seal_raw_region_for_testing");
	return region_->seal(region_nonce(r), region_aad(vaddr, first, nr), compressed, out);
}

Status PageCipher::open_region(uint64_t r, uint64_t vaddr, uint64_t first, std::span<const uint8_t> stored,
			       std::span<uint8_t> pages)
{
	size_t nr = pages.size() / kPageSize;
	/* On any failure the pages are zeroed: nothing half-decompressed is left behind. */
	auto fail = [&](Status s) {
		gnutls_memset(pages.data(), 0, pages.size());
		return s;
	};
	if (!region_)
		return fail(invalid_argument("this checkpoint does not compress"));
	if (pages.empty() || pages.size() % kPageSize || pages.size() > kMaxCompressBlock ||
	    stored.size() <= kAeadTagLen || stored.size() >= pages.size())
		return fail(bad_data(region_name(r, vaddr, first, nr) + ": bad stored length " +
				     std::to_string(stored.size())));
	if (scratch_.size() < kMaxCompressBlock)
		scratch_ = SecureBytes(kMaxCompressBlock);
	auto comp = scratch_.span().first(stored.size() - kAeadTagLen);
	auto aad = region_aad(vaddr, first, nr);
	/* Authenticated first: nothing a forger wrote reaches the decompressor. */
	if (!region_->open(region_nonce(r), aad, stored, comp).ok())
		return fail(bad_data(region_name(r, vaddr, first, nr) + " failed authentication"));
	auto d = codec_->decompress(comp, pages, true);
	gnutls_memset(comp.data(), 0, comp.size());
	if (!d.ok())
		return fail(std::move(d).status().with_context(region_name(r, vaddr, first, nr)));
	return {};
}

Status PageCipher::tag(uint64_t vaddr, uint64_t index, std::span<const uint8_t> page,
		       std::span<uint8_t, kPageTagLen> out)
{
	auto id = identity(vaddr, index);
	std::array<uint8_t, kAeadNonceLen> nonce{};
	std::copy_n(id.begin() + 8, 8, nonce.begin()); /* LE64(index) || 0^4 */
	giovec_t aad[2] = {
		{id.data(), id.size()},
		{const_cast<uint8_t *>(page.data()), page.size()},
	};
	size_t tag_len = out.size();
	int rc = gnutls_aead_cipher_encryptv2(gmac_.get(), nonce.data(), nonce.size(), aad, 2, nullptr, 0,
					      out.data(), &tag_len);
	if (rc < 0 || tag_len != kPageTagLen)
		return gnutls_status("page tag", rc < 0 ? rc : GNUTLS_E_INTERNAL_ERROR);
	return {};
}

Status PageCipher::seal(uint64_t vaddr, uint64_t index, std::span<uint8_t> pages, std::span<uint8_t> tags)
{
	CRIUSEC_TRY(check_pages(pages, tags));
	for (size_t k = 0; k < pages.size() / kPageSize; k++) {
		auto page = pages.subspan(k * kPageSize, kPageSize);
		uint64_t v = vaddr + k * kPageSize, i = index + k;
		auto id = identity(v, i);
		CRIUSEC_TRY(xts_.encrypt(id, page, page));
		CRIUSEC_TRY(tag(v, i, page, tags.subspan(k * kPageTagLen).first<kPageTagLen>()));
	}
	return {};
}

Status PageCipher::open(uint64_t vaddr, uint64_t index, std::span<uint8_t> pages, std::span<const uint8_t> tags)
{
	CRIUSEC_TRY(check_pages(pages, tags));
	size_t n = pages.size() / kPageSize;
	/* All tags first: no page is decrypted unless every one is authentic. */
	for (size_t k = 0; k < n; k++) {
		std::array<uint8_t, kPageTagLen> want;
		uint64_t v = vaddr + k * kPageSize, i = index + k;
		CRIUSEC_TRY(tag(v, i, pages.subspan(k * kPageSize, kPageSize), want));
		if (!ct_equal(want, tags.subspan(k * kPageTagLen, kPageTagLen))) {
			gnutls_memset(pages.data(), 0, pages.size());
			return bad_data(page_name(v, i) + " failed authentication");
		}
	}
	for (size_t k = 0; k < n; k++) {
		auto page = pages.subspan(k * kPageSize, kPageSize);
		auto id = identity(vaddr + k * kPageSize, index + k);
		CRIUSEC_TRY(xts_.decrypt(id, page, page));
	}
	return {};
}
} /* namespace criusec */
