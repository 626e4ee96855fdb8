#include "pages.h"

#include <algorithm>
#include <array>
#include <condition_variable>
#include <cstdio>
#include <cerrno>
#include <limits>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <pthread.h>
#include <signal.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include "bytes.h"
#include "io.h"
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

std::string region_name(uint64_t r, uint64_t vaddr, uint64_t first, size_t nr)
{
	char buf[128];
	std::snprintf(buf, sizeof(buf), "region %llu (pages %llu-%llu, vaddr 0x%llx)", static_cast<unsigned long long>(r),
		      static_cast<unsigned long long>(first), static_cast<unsigned long long>(first + nr - 1),
		      static_cast<unsigned long long>(vaddr));
	return buf;
}

} /* namespace */

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

namespace {

/* Below this a thread costs more than it saves. */
constexpr size_t kMinPagesPerWorker = 128;
/* A piece read, checked and decrypted while it is still in cache. */
constexpr size_t kReadPiecePages = 64;
/*
 * The seal ring (measured on 2 cores): pieces large enough that claiming
 * one costs little beside its crypto, small enough to stay in cache
 * between read and seal; writes of a few pieces, so that the helpers go on
 * sealing into the rest of the ring while the writer writes.
 */
constexpr size_t kRingPiecePages = 64;
constexpr size_t kRingPieceLen = kRingPiecePages * kPageSize;
constexpr size_t kRingPieces = 16;
constexpr size_t kStageLen = kRingPieces * kRingPieceLen;
/* Then as much again for the pieces compressed and sealed (ciphertext only). */
constexpr size_t kStageMapLen = 2 * kStageLen;
static_assert(kRingPiecePages == kRegionPages, "a ring piece is a region");
constexpr size_t kMaxWritePieces = 4;
/* Runs shorter than this never start the helpers (a small image pays no thread). */
constexpr size_t kMinHelperPieces = 2;

/*
 * The ring's memory, one for the process: page images are dumped one at a
 * time, and memory touched once costs no page faults again (dear in a
 * VM).  Mapped rather than allocated and zeroed, so that slots never used
 * are never touched.  Held for the whole of a run; between runs it holds
 * ciphertext only (a failed run wipes what it used); wiped at exit.
 */
class Stage {
public:
	Stage() = default;
	Stage(const Stage &) = delete;
	Stage &operator=(const Stage &) = delete;
	~Stage()
	{
		if (p_) {
			wipe();
			munmap(p_, kStageMapLen);
		}
	}

	std::mutex mu;

	/* nullptr if it can't be mapped */
	uint8_t *get() noexcept
	{
		if (!p_) {
			void *m = mmap(nullptr, kStageMapLen, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
			if (m != MAP_FAILED) {
				/* Plaintext pages pass through here: never in a core dump. */
				madvise(m, kStageMapLen, MADV_DONTDUMP);
				p_ = static_cast<uint8_t *>(m);
			}
		}
		return p_;
	}
	void used(size_t len) noexcept { used_ = std::max(used_, len); }
	void wipe() noexcept
	{
		if (p_)
			gnutls_memset(p_, 0, used_);
	}

private:
	uint8_t *p_ = nullptr;
	size_t used_ = 0;
};

Stage &stage() noexcept
{
	static Stage s;
	return s;
}

size_t worker_count() noexcept
{
	unsigned n = std::thread::hardware_concurrency();
	return n < 1 ? 1 : n > 4 ? 4 : n;
}

} /* namespace */

/*
 * The dump's pipeline (PagePool::seal_pipe).  A run of pages is cut into
 * pieces; piece k lives in slot k % kRingPieces of the stage while it is
 * read from the pipe, sealed in place and written out.  Any thread may
 * claim the next piece: it reads it from the pipe (one reader at a time,
 * so pieces are read in order), then seals it outside the lock.  Only the
 * calling thread (the writer) writes, in order, as many sealed pieces at
 * once as are ready.  A piece can be claimed once the piece that last
 * used its slot is written.
 *
 * In a compressing checkpoint each piece is a region: compressed and
 * sealed into the second half of the stage when it shrinks, else sealed
 * page by page in place; the writer appends each region's record.
 */
struct RegionRun {
	uint64_t first;		       /* the number of the run's first region */
	std::vector<uint8_t> *records; /* the pagetags plaintext they are appended to */
	bool compress;		       /* false: every region is XTS (a page server counts pages) */
};

class SealRing {
public:
	explicit SealRing(std::span<PageCipher> helpers) : helpers_(helpers), owner_(getpid()) {}
	SealRing(const SealRing &) = delete;
	SealRing &operator=(const SealRing &) = delete;
	~SealRing()
	{
		{
			std::lock_guard<std::mutex> lk(mu_);
			stop_ = true;
		}
		helper_cv_.notify_all();
		for (auto &t : threads_)
			t.join();
	}

	Status run(PageCipher &own, int in, const PagePool::Sink &out, uint64_t vaddr, uint64_t index, size_t len,
		   std::span<uint8_t> tags, const RegionRun *regions = nullptr);

	/* In a child forked while the helpers ran: they are not here to join. */
	bool forked() const noexcept { return owner_ != getpid(); }

private:
	void start_helpers() noexcept;
	void helper(PageCipher &c) noexcept;
	bool work_one(PageCipher &c, std::unique_lock<std::mutex> &lk) noexcept;
	void fail(Status s) noexcept;

	bool claimable() const noexcept
	{
		return !failed_ && !reading_ && next_ < pieces_ && next_ < written_ + kRingPieces;
	}
	bool sealed(size_t k) const noexcept { return sealed_[k % kRingPieces] == k + 1; }
	size_t piece_len(size_t k) const noexcept { return std::min(kRingPieceLen, len_ - k * kRingPieceLen); }
	uint8_t *slot(size_t k) noexcept { return stage_ + (k % kRingPieces) * kRingPieceLen; }
	uint8_t *cslot(size_t k) noexcept { return stage_ + kStageLen + (k % kRingPieces) * kRingPieceLen; }
	size_t stored(size_t k) const noexcept { return stored_[k % kRingPieces]; }
	void add_record(size_t k);

	std::span<PageCipher> helpers_;
	std::vector<std::thread> threads_;
	bool started_ = false;
	pid_t owner_;
	uint8_t *stage_ = nullptr; /* stage().get(), during a run */

	std::mutex mu_;
	std::condition_variable helper_cv_, writer_cv_;
	bool stop_ = false;
	size_t helpers_waiting_ = 0;
	bool writer_waiting_ = false;

	/* The run under way (pieces_ == 0: none) */
	int in_ = -1;
	uint64_t vaddr_ = 0, index_ = 0;
	size_t len_ = 0, pieces_ = 0;
	std::span<uint8_t> tags_;
	size_t next_ = 0;      /* the next piece to claim */
	bool reading_ = false; /* piece next_ - 1 is being read from the pipe */
	size_t written_ = 0;   /* pieces written out */
	size_t busy_ = 0;      /* threads with a claimed piece */
	std::array<size_t, kRingPieces> sealed_{}; /* per slot: 1 + the number of the piece sealed there */
	std::array<size_t, kRingPieces> stored_{}; /* per slot: compressed and sealed length, 0: XTS */
	const RegionRun *regions_ = nullptr;
	bool failed_ = false;
	Status error_;
};

void SealRing::start_helpers() noexcept
{
	started_ = true;
	/* Signals are CRIU's main thread's business, never a helper's. */
	sigset_t all, old;
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	try {
		threads_.reserve(helpers_.size());
		for (auto &c : helpers_)
			threads_.emplace_back([this, &c] { helper(c); });
	} catch (...) {
		/* Fewer helpers (or none): the writer seals what they do not. */
	}
	pthread_sigmask(SIG_SETMASK, &old, nullptr);
}

void SealRing::fail(Status s) noexcept
{
	if (!failed_) {
		failed_ = true;
		error_ = std::move(s);
	}
	if (writer_waiting_)
		writer_cv_.notify_one();
}

/* Claim, read and seal the next piece; false when none can be claimed now.  lk is held on entry and on return. */
bool SealRing::work_one(PageCipher &c, std::unique_lock<std::mutex> &lk) noexcept
{
	if (!claimable())
		return false;
	size_t k = next_++;
	std::span<uint8_t> piece{slot(k), piece_len(k)};
	size_t pages = piece.size() / kPageSize;
	uint64_t v = vaddr_ + k * kRingPieceLen, i = index_ + k * kRingPiecePages;
	auto tags = tags_.subspan(k * kRingPiecePages * kPageTagLen, pages * kPageTagLen);
	int in = in_;
	reading_ = true;
	busy_++;
	lk.unlock();

	Status s;
	try {
		auto got = read_full(in, piece);
		if (!got.ok())
			s = std::move(got).status().with_context("can't read pages from the pipe");
		else if (got.value() != piece.size())
			s = Status::error(EIO, "short read of pages from the pipe (" + std::to_string(got.value()) + " of " +
						       std::to_string(piece.size()) + " bytes)");
	} catch (...) {
		s = Status::error(ENOMEM, "out of memory");
	}

	lk.lock();
	reading_ = false;
	if (s.ok() && helpers_waiting_ && claimable())
		helper_cv_.notify_one();
	if (s.ok() && writer_waiting_)
		writer_cv_.notify_one();
	size_t stored = 0;
	if (s.ok()) {
		const RegionRun *rr = regions_;
		lk.unlock();
		try {
			if (rr && rr->compress) {
				auto n = c.seal_region(rr->first + k, v, i, piece, {cslot(k), piece.size() - 1});
				if (n.ok())
					stored = n.value();
				else
					s = std::move(n).status();
			}
			if (s.ok() && !stored)
				s = c.seal(v, i, piece, tags);
		} catch (...) {
			s = Status::error(ENOMEM, "out of memory");
		}
		lk.lock();
	}
	if (s.ok()) {
		stored_[k % kRingPieces] = stored;
		sealed_[k % kRingPieces] = k + 1;
	}
	else
		fail(std::move(s));
	busy_--;
	if (writer_waiting_)
		writer_cv_.notify_one();
	return true;
}

void SealRing::helper(PageCipher &c) noexcept
{
	std::unique_lock<std::mutex> lk(mu_);
	while (!stop_) {
		if (work_one(c, lk))
			continue;
		helpers_waiting_++;
		helper_cv_.wait(lk);
		helpers_waiting_--;
	}
}

/* The record of region k (writer only, in order): u32 pages, u32 stored, then an XTS region's tags. */
void SealRing::add_record(size_t k)
{
	size_t pages = piece_len(k) / kPageSize;
	put_u32(*regions_->records, static_cast<uint32_t>(pages));
	put_u32(*regions_->records, static_cast<uint32_t>(stored(k)));
	if (!stored(k))
		put_bytes(*regions_->records, tags_.subspan(k * kRingPiecePages * kPageTagLen, pages * kPageTagLen));
}

Status SealRing::run(PageCipher &own, int in, const PagePool::Sink &out, uint64_t vaddr, uint64_t index, size_t len,
		     std::span<uint8_t> tags, const RegionRun *regions)
{
	if (len == 0)
		return {};
	std::lock_guard<std::mutex> stage_lk(stage().mu);
	uint8_t *buf = stage().get();
	if (!buf)
		return Status::error(ENOMEM, "can't map a buffer for pages");
	stage().used(std::min(len, kStageLen));
	std::unique_lock<std::mutex> lk(mu_);
	stage_ = buf;
	in_ = in;
	vaddr_ = vaddr;
	index_ = index;
	len_ = len;
	pieces_ = (len + kRingPieceLen - 1) / kRingPieceLen;
	tags_ = tags;
	regions_ = regions;
	next_ = written_ = 0;
	sealed_.fill(0);
	stored_.fill(0);
	failed_ = false;
	error_ = {};
	if (pieces_ >= kMinHelperPieces && !started_)
		start_helpers();
	if (helpers_waiting_)
		helper_cv_.notify_all();

	while (written_ < pieces_ && !failed_) {
		size_t w = written_;
		if (!sealed(w)) {
			if (work_one(own, lk))
				continue;
			writer_waiting_ = true;
			writer_cv_.wait(lk, [&] { return failed_ || sealed(w) || claimable(); });
			writer_waiting_ = false;
			continue;
		}
		/* Every sealed piece from w on, up to the end of the ring (a compressed one alone). */
		size_t n = 1, bytes = stored(w) ? stored(w) : piece_len(w);
		while (!stored(w) && n < kMaxWritePieces && w + n < pieces_ && (w + n) % kRingPieces && sealed(w + n) &&
		       !stored(w + n))
			bytes += piece_len(w + n++);
		std::span<const uint8_t> data{stored(w) ? cslot(w) : slot(w), bytes};
		lk.unlock();
		Status s;
		try {
			if (regions_)
				for (size_t j = 0; j < n; j++)
					add_record(w + j);
			s = out(data);
		} catch (...) {
			s = Status::error(ENOMEM, "out of memory");
		}
		lk.lock();
		if (!s.ok()) {
			fail(std::move(s));
			break;
		}
		written_ += n;
		if (helpers_waiting_ && claimable())
			helper_cv_.notify_all();
	}

	/* No more claims; wait for the pieces already claimed. */
	pieces_ = 0;
	writer_waiting_ = true;
	writer_cv_.wait(lk, [&] { return busy_ == 0; });
	writer_waiting_ = false;
	in_ = -1;
	tags_ = {};
	regions_ = nullptr;
	Status s = std::move(error_);
	error_ = {};
	if (!s.ok())
		stage().wipe(); /* pieces read but not sealed */
	stage_ = nullptr;
	return s;
}

/* The last region lazy pages decompressed, for the next pages they ask of it. */
struct RegionCache {
	std::mutex mu;
	uint64_t r = std::numeric_limits<uint64_t>::max();
	uint64_t vaddr = 0;
	SecureBytes pages;
};

PagePool::PagePool(std::vector<PageCipher> w) noexcept : workers_(std::move(w)) {}
PagePool::PagePool(PagePool &&o) noexcept = default;

PagePool &PagePool::operator=(PagePool &&o) noexcept
{
	if (this != &o) {
		drop_ring(); /* before the ciphers its helpers use */
		workers_ = std::move(o.workers_);
		ring_ = std::move(o.ring_);
		regions_on_ = o.regions_on_;
		fixed_ = o.fixed_;
		pages_ = o.pages_;
		nregions_ = o.nregions_;
		index_ = std::move(o.index_);
		tags_ = std::move(o.tags_);
		regions_ = std::move(o.regions_);
		file_size_ = o.file_size_;
		punched_ = std::move(o.punched_);
		cache_ = std::move(o.cache_);
	}
	return *this;
}

PagePool::~PagePool()
{
	drop_ring();
}

void PagePool::drop_ring() noexcept
{
	if (ring_ && ring_->forked()) {
		/* Its helpers are the parent's: nothing to join here. */
		(void)ring_.release();
	}
	ring_.reset();
}

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
	PagePool pool(std::move(w));
	pool.regions_on_ = ctx.compress() != CompressAlg::None;
	return pool;
}

/* Run f(worker, first unit, units) over nr units (pages by default), in parallel when that pays. */
template <typename F> Status PagePool::split(size_t nr_pages, F &&f, size_t min_per_worker)
{
	if (!min_per_worker)
		min_per_worker = kMinPagesPerWorker;
	size_t n = std::min(workers_.size(), std::max<size_t>(1, nr_pages / min_per_worker));
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

Status PagePool::seal_pipe(int in, const Sink &out, uint64_t vaddr, uint64_t index, size_t len, std::span<uint8_t> tags)
{
	if (len % kPageSize)
		return invalid_argument("page data must be whole 4096-byte pages");
	if (tags.size() != len / kPageSize * kPageTagLen)
		return invalid_argument("one 16-byte tag per page");
	if (regions_on_)
		return invalid_argument("a compressing checkpoint's pages are appended (append_pipe)");
	if (!ring_)
		ring_ = std::make_unique<SealRing>(std::span<PageCipher>(workers_).subspan(1));
	return ring_->run(workers_[0], in, out, vaddr, index, len, tags);
}

Status PagePool::append_pipe(int in, const Sink &out, uint64_t vaddr, size_t len)
{
	if (len % kPageSize)
		return invalid_argument("page data must be whole 4096-byte pages");
	size_t n = len / kPageSize;
	std::vector<uint8_t> tags(n * kPageTagLen);
	if (!regions_on_) {
		CRIUSEC_TRY(seal_pipe(in, out, vaddr, pages_, len, tags));
		put_bytes(index_, tags);
		pages_ += n;
		return {};
	}
	if (!ring_)
		ring_ = std::make_unique<SealRing>(std::span<PageCipher>(workers_).subspan(1));
	RegionRun rr{nregions_, &index_, !fixed_};
	size_t before = index_.size();
	Status s = ring_->run(workers_[0], in, out, vaddr, pages_, len, tags, &rr);
	if (!s.ok()) {
		index_.resize(before);
		return s;
	}
	pages_ += n;
	nregions_ += (n + kRegionPages - 1) / kRegionPages;
	return {};
}

Result<uint64_t> PagePool::index_pages(const Ctx &ctx, std::span<const uint8_t> index)
{
	PagePool pool(std::vector<PageCipher>{});
	pool.regions_on_ = ctx.compress() != CompressAlg::None;
	CRIUSEC_TRY(pool.parse(index));
	return pool.pages_;
}

Status PagePool::attach(std::span<const uint8_t> index, uint64_t file_size)
{
	CRIUSEC_TRY(parse(index));
	file_size_ = file_size;
	uint64_t want = regions_on_ ? (regions_.empty() ? 0 : regions_.back().offset + regions_.back().size())
				    : pages_ * kPageSize;
	/* Dedup punches holes but keeps the size: any other size is damage. */
	if (file_size != want)
		return bad_data(std::to_string(file_size) + " bytes, but the dump wrote " + std::to_string(want) + " (" +
				std::to_string(pages_) + " pages): truncated or extended");
	return {};
}

Status PagePool::parse(std::span<const uint8_t> index)
{
	tags_.clear();
	regions_.clear();
	punched_.clear();
	cache_.reset();
	pages_ = 0;
	if (!regions_on_) {
		if (index.size() % kPageTagLen)
			return bad_data("page tags of " + std::to_string(index.size()) + " bytes: not whole tags");
		tags_.assign(index.begin(), index.end());
		pages_ = index.size() / kPageTagLen;
	} else {
		uint64_t offset = 0;
		for (size_t pos = 0; pos < index.size();) {
			std::string what = "region record " + std::to_string(regions_.size());
			if (index.size() - pos < kRegionRecordLen)
				return bad_data(what + " cut short");
			auto u32 = [&](size_t at) {
				return uint32_t(index[at]) << 24 | uint32_t(index[at + 1]) << 16 | uint32_t(index[at + 2]) << 8 |
				       index[at + 3];
			};
			PageRegion rg;
			rg.first = pages_;
			rg.nr = u32(pos);
			rg.stored = u32(pos + 4);
			rg.offset = offset;
			pos += kRegionRecordLen;
			if (rg.nr == 0 || rg.nr > kMaxRegionPages)
				return bad_data(what + ": " + std::to_string(rg.nr) + " pages");
			if (rg.stored && (rg.stored <= kAeadTagLen || rg.stored >= uint64_t(rg.nr) * kPageSize))
				return bad_data(what + ": stored length " + std::to_string(rg.stored) + " for " +
						std::to_string(rg.nr) + " pages");
			if (!rg.stored) {
				size_t t = size_t(rg.nr) * kPageTagLen;
				if (index.size() - pos < t)
					return bad_data(what + ": tags cut short");
				rg.tags = tags_.size() / kPageTagLen;
				tags_.insert(tags_.end(), index.begin() + pos, index.begin() + pos + t);
				pos += t;
			}
			offset += rg.size();
			pages_ += rg.nr;
			regions_.push_back(rg);
		}
		if (!regions_.empty())
			cache_ = std::make_unique<RegionCache>();
	}
	return {};
}

namespace {

Status pread_all(int fd, std::span<uint8_t> buf, uint64_t off, const std::string &what)
{
	for (size_t got = 0; got < buf.size();) {
		ssize_t r = ::pread(fd, buf.data() + got, buf.size() - got, static_cast<off_t>(off + got));
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return Status::error(errno, "can't read pages");
		if (r == 0)
			return bad_data("pages cut short at " + what);
		got += static_cast<size_t>(r);
	}
	return {};
}

} /* namespace */

/* Pages [from, from + out / 4096) of region rnum, whose first page is at vaddr. */
Status PagePool::read_region(PageCipher &c, int fd, const PageRegion &rg, uint64_t rnum, uint64_t vaddr, uint64_t from,
			     std::span<uint8_t> out)
{
	size_t n = out.size() / kPageSize;
	if (!rg.stored) {
		CRIUSEC_TRY(pread_all(fd, out, rg.offset + from * kPageSize,
				      page_name(vaddr + from * kPageSize, rg.first + from)));
		return c.open(vaddr + from * kPageSize, rg.first + from, out,
			      std::span<const uint8_t>(tags_).subspan((rg.tags + from) * kPageTagLen, n * kPageTagLen));
	}
	/* Not zeroed first: it only ever holds what the file had. */
	if (!c.stored_)
		c.stored_.reset(new uint8_t[kMaxCompressBlock]);
	std::span<uint8_t> stored(c.stored_.get(), rg.stored);
	CRIUSEC_TRY(pread_all(fd, stored, rg.offset, region_name(rnum, vaddr, rg.first, rg.nr)));
	if (n == rg.nr)
		return c.open_region(rnum, vaddr, rg.first, stored, out);
	/* Part of a region: through the cache, keyed by the address it was authenticated for. */
	std::lock_guard<std::mutex> lk(cache_->mu);
	if (cache_->r != rnum || cache_->vaddr != vaddr) {
		cache_->r = std::numeric_limits<uint64_t>::max();
		if (cache_->pages.size() != kMaxCompressBlock)
			cache_->pages = SecureBytes(kMaxCompressBlock);
		CRIUSEC_TRY(c.open_region(rnum, vaddr, rg.first, stored, cache_->pages.span().first(rg.nr * kPageSize)));
		cache_->r = rnum;
		cache_->vaddr = vaddr;
	}
	std::memcpy(out.data(), cache_->pages.data() + from * kPageSize, out.size());
	return {};
}

Status PagePool::read(int fd, uint64_t vaddr, uint64_t first, std::span<uint8_t> pages)
{
	if (pages.size() % kPageSize)
		return invalid_argument("page data must be whole 4096-byte pages");
	uint64_t n = pages.size() / kPageSize;
	if (first > pages_ || n > pages_ - first)
		return bad_data("pages " + std::to_string(first) + "-" + std::to_string(first + n) +
				" are outside what was dumped (" + std::to_string(pages_) + " pages)");
	if (!regions_on_) {
		return pread(fd, vaddr, first, pages,
			     std::span<const uint8_t>(tags_).subspan(first * kPageTagLen, n * kPageTagLen));
	}
	if (n == 0)
		return {};
	/* The regions the pages span, each read by one worker. */
	auto it = std::upper_bound(regions_.begin(), regions_.end(), first,
				   [](uint64_t f, const PageRegion &rg) { return f < rg.first; });
	size_t r0 = static_cast<size_t>(it - regions_.begin()) - 1, r1 = r0;
	while (r1 < regions_.size() && regions_[r1].first < first + n)
		r1++;
	Status s = split(
		r1 - r0,
		[&](PageCipher &c, size_t a, size_t count) -> Status {
			for (size_t k = r0 + a; k < r0 + a + count; k++) {
				const PageRegion &rg = regions_[k];
				uint64_t lo = std::max(first, rg.first), hi = std::min(first + n, rg.first + rg.nr);
				auto out = pages.subspan((lo - first) * kPageSize, (hi - lo) * kPageSize);
				/* The caller's address for page first gives the region's. */
				uint64_t rv = vaddr + (rg.first - first) * kPageSize;
				CRIUSEC_TRY(read_region(c, fd, rg, k, rv, lo - rg.first, out));
			}
			return {};
		},
		2);
	if (!s.ok())
		gnutls_memset(pages.data(), 0, pages.size());
	return s;
}

Status PagePool::punch(uint64_t first, uint64_t nr, const Hole &hole)
{
	if (first > pages_ || nr > pages_ - first)
		return bad_data("pages to punch are outside what was dumped");
	if (nr == 0)
		return {};
	if (!regions_on_)
		return hole(first * kPageSize, nr * kPageSize);
	if (cache_) { /* what is punched reads as punched */
		std::lock_guard<std::mutex> lk(cache_->mu);
		cache_->r = std::numeric_limits<uint64_t>::max();
	}
	if (punched_.empty())
		punched_.assign(pages_, 0);
	auto it = std::upper_bound(regions_.begin(), regions_.end(), first,
				   [](uint64_t f, const PageRegion &rg) { return f < rg.first; });
	for (size_t k = static_cast<size_t>(it - regions_.begin()) - 1;
	     k < regions_.size() && regions_[k].first < first + nr; k++) {
		const PageRegion &rg = regions_[k];
		uint64_t lo = std::max(first, rg.first), hi = std::min(first + nr, rg.first + rg.nr);
		if (!rg.stored) {
			CRIUSEC_TRY(hole(rg.offset + (lo - rg.first) * kPageSize, (hi - lo) * kPageSize));
			continue;
		}
		/* A compressed region goes whole, once none of its pages is needed. */
		std::fill(punched_.begin() + lo, punched_.begin() + hi, 1);
		if (std::all_of(punched_.begin() + rg.first, punched_.begin() + rg.first + rg.nr,
				[](uint8_t b) { return b; }))
			CRIUSEC_TRY(hole(rg.offset, rg.stored));
	}
	return {};
}

} /* namespace criusec */
