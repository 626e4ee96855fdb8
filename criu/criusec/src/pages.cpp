#include "pages.h"

#include <algorithm>
#include <array>
#include <cstdio>
#include <cerrno>
#include <string>
#include <thread>
#include <vector>

#include <unistd.h>

#include "bytes.h"
#include "kdf.h"

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

} /* namespace */

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
	return PageCipher(std::move(xts).value(), std::move(h));
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

namespace {

/* Below this a thread costs more than it saves. */
constexpr size_t kMinPagesPerWorker = 128;
/* A piece read, checked and decrypted while it is still in cache. */
constexpr size_t kReadPiecePages = 64;

size_t worker_count() noexcept
{
	unsigned n = std::thread::hardware_concurrency();
	return n < 1 ? 1 : n > 4 ? 4 : n;
}

} /* namespace */

Result<PagePool> PagePool::create(const Ctx &ctx, std::string_view image_name)
{
	std::vector<PageCipher> w;
	size_t n = worker_count();
	w.reserve(n);
	for (size_t i = 0; i < n; i++) {
		auto c = PageCipher::create(ctx, image_name);
		if (!c.ok())
			return std::move(c).status();
		w.push_back(std::move(c).value());
	}
	return PagePool(std::move(w));
}

/* Run f(worker, first page, pages) over nr_pages, in parallel when that pays. */
template <typename F> Status PagePool::split(size_t nr_pages, F &&f)
{
	size_t n = std::min(workers_.size(), std::max<size_t>(1, nr_pages / kMinPagesPerWorker));
	if (n <= 1)
		return f(workers_[0], size_t{0}, nr_pages);
	std::vector<Status> st(n);
	std::vector<std::thread> threads;
	size_t per = (nr_pages + n - 1) / n;
	try {
		for (size_t w = 1; w < n; w++) {
			size_t first = std::min(nr_pages, w * per), count = std::min(per, nr_pages - first);
			threads.emplace_back([&, w, first, count] { st[w] = f(workers_[w], first, count); });
		}
	} catch (...) {
		/* No thread to be had: the ones not started run here. */
		for (size_t w = threads.size() + 1; w < n; w++) {
			size_t first = std::min(nr_pages, w * per), count = std::min(per, nr_pages - first);
			st[w] = f(workers_[w], first, count);
		}
	}
	st[0] = f(workers_[0], size_t{0}, std::min(per, nr_pages));
	for (auto &t : threads)
		t.join();
	for (auto &s : st)
		if (!s.ok())
			return std::move(s);
	return {};
}

Status PagePool::seal(uint64_t vaddr, uint64_t index, std::span<uint8_t> pages, std::span<uint8_t> tags)
{
	CRIUSEC_TRY(check_pages(pages, tags));
	return split(pages.size() / kPageSize, [&](PageCipher &c, size_t first, size_t count) {
		return c.seal(vaddr + first * kPageSize, index + first, pages.subspan(first * kPageSize, count * kPageSize),
			      tags.subspan(first * kPageTagLen, count * kPageTagLen));
	});
}

Status PagePool::open(uint64_t vaddr, uint64_t index, std::span<uint8_t> pages, std::span<const uint8_t> tags)
{
	CRIUSEC_TRY(check_pages(pages, tags));
	Status s = split(pages.size() / kPageSize, [&](PageCipher &c, size_t first, size_t count) {
		return c.open(vaddr + first * kPageSize, index + first, pages.subspan(first * kPageSize, count * kPageSize),
			      tags.subspan(first * kPageTagLen, count * kPageTagLen));
	});
	if (!s.ok())
		gnutls_memset(pages.data(), 0, pages.size());
	return s;
}

Status PagePool::pread(int fd, uint64_t vaddr, uint64_t index, std::span<uint8_t> pages, std::span<const uint8_t> tags)
{
	CRIUSEC_TRY(check_pages(pages, tags));
	Status s = split(pages.size() / kPageSize, [&](PageCipher &c, size_t first, size_t count) -> Status {
		for (size_t done = 0; done < count;) {
			size_t n = std::min(kReadPiecePages, count - done), p = first + done;
			auto piece = pages.subspan(p * kPageSize, n * kPageSize);
			off_t off = static_cast<off_t>((index + p) * kPageSize);
			for (size_t got = 0; got < piece.size();) {
				ssize_t r = ::pread(fd, piece.data() + got, piece.size() - got, off + got);
				if (r < 0 && errno == EINTR)
					continue;
				if (r < 0)
					return Status::error(errno, "can't read pages");
				if (r == 0)
					return bad_data("pages cut short at " + page_name(vaddr + (p * kPageSize) + got, index + p));
				got += static_cast<size_t>(r);
			}
			CRIUSEC_TRY(c.open(vaddr + p * kPageSize, index + p, piece,
					   tags.subspan(p * kPageTagLen, n * kPageTagLen)));
			done += n;
		}
		return {};
	});
	if (!s.ok())
		gnutls_memset(pages.data(), 0, pages.size());
	return s;
}

} /* namespace criusec */
