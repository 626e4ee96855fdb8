#include "pages.h"

#include <algorithm>
#include <array>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>
#include <utility>
#include <cerrno>
#include <limits>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <pthread.h>
#include <sched.h>
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
 * sealing into the rest of the ring while one thread writes.
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
/* However many CPUs there are: past this the pipe and the disk are the limit. */
constexpr size_t kMaxWorkers = 16;

/*
 * The ring's memory.  Mapped rather than allocated and zeroed, so that
 * slots never used are never touched; one is kept for the next ring of
 * the process, since memory touched once costs no page faults again (dear
 * in a VM).  It holds plaintext during a run and ciphertext or nothing
 * between runs: a ring wipes what it used before it gives the stage back.
 */
class Stage {
public:
	static Stage *take() noexcept
	{
		std::lock_guard<std::mutex> lk(spare_mu_);
		if (spare_)
			return std::exchange(spare_, nullptr);
		void *m = mmap(nullptr, kStageMapLen, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (m == MAP_FAILED)
			return nullptr;
		/* Plaintext pages pass through here: never in a core dump. */
		madvise(m, kStageMapLen, MADV_DONTDUMP);
		auto *s = new (std::nothrow) Stage(static_cast<uint8_t *>(m));
		if (!s)
			munmap(m, kStageMapLen);
		return s;
	}
	/* Back for the next ring, wiped; unmapped if one is kept already. */
	static void give(Stage *s) noexcept
	{
		if (!s)
			return;
		s->wipe();
		std::lock_guard<std::mutex> lk(spare_mu_);
		if (!spare_) {
			spare_ = s;
			return;
		}
		delete s;
	}
	Stage(const Stage &) = delete;
	Stage &operator=(const Stage &) = delete;
	~Stage()
	{
		wipe();
		munmap(p_, kStageMapLen);
	}
	uint8_t *data() noexcept { return p_; }
	/* Plaintext went into the first len bytes of slot k. */
	void used(size_t k, size_t len) noexcept { used_[k] = std::max(used_[k], len); }
	/* Only what was used: a small image touches a page or two of each slot, and wiping more would fault it in. */
	void wipe() noexcept
	{
		for (size_t k = 0; k < kRingPieces; k++) {
			gnutls_memset(p_ + k * kRingPieceLen, 0, used_[k]);
			used_[k] = 0;
		}
	}

private:
	explicit Stage(uint8_t *p) noexcept : p_(p) {}
	uint8_t *p_;
	std::array<size_t, kRingPieces> used_{};
	static inline std::mutex spare_mu_;
	static inline Stage *spare_ = nullptr;
	/* The one kept is wiped and unmapped at exit. */
	struct Keeper {
		~Keeper() { delete std::exchange(spare_, nullptr); }
	};
	static inline Keeper keeper_;
};

/* The quota of one cgroup directory in whole CPUs (rounded up), 0 for none. */
size_t dir_quota(const std::string &dir, bool v2) noexcept
{
	unsigned long long quota = 0, period = 0;
	if (v2) {
		FILE *m = std::fopen((dir + "/cpu.max").c_str(), "re");
		if (!m)
			return 0;
		char q[32] = "";
		bool ok = std::fscanf(m, "%31s %llu", q, &period) == 2 && std::strcmp(q, "max");
		std::fclose(m);
		if (!ok)
			return 0;
		quota = std::strtoull(q, nullptr, 10);
	} else {
		auto num = [&](const char *file, long long &v) {
			FILE *f = std::fopen((dir + file).c_str(), "re");
			bool ok = f && std::fscanf(f, "%lld", &v) == 1;
			if (f)
				std::fclose(f);
			return ok;
		};
		long long q = -1, p = 0;
		if (!num("/cpu.cfs_quota_us", q) || !num("/cpu.cfs_period_us", p) || q <= 0 || p <= 0)
			return 0;
		quota = static_cast<unsigned long long>(q);
		period = static_cast<unsigned long long>(p);
	}
	if (!period || !quota)
		return 0;
	return static_cast<size_t>(std::max(1ULL, (quota + period - 1) / period));
}

/*
 * Whole CPUs in criu's cgroup CPU quota, the tightest from its cgroup up to
 * the root: cgroup v2's cpu.max, or v1's cpu controller (cfs_quota_us);
 * 0 where none is set.
 */
size_t cgroup_cpus() noexcept
{
	try {
		struct Where {
			std::string mount, path; /* path: "" or "/a/b" */
			bool v2;
		};
		std::vector<Where> dirs;
		FILE *f = std::fopen("/proc/self/cgroup", "re");
		if (!f)
			return 0;
		char line[4096];
		while (std::fgets(line, sizeof(line), f)) {
			line[std::strcspn(line, "\n")] = '\0';
			/* hierarchy-ID:controller-list:path */
			char *c1 = std::strchr(line, ':'), *c2 = c1 ? std::strchr(c1 + 1, ':') : nullptr;
			if (!c2)
				continue;
			std::string ctrls(c1 + 1, c2), path(c2 + 1);
			if (path == "/")
				path.clear();
			if (ctrls.empty()) {
				dirs.push_back({"/sys/fs/cgroup", path, true});
				dirs.push_back({"/sys/fs/cgroup/unified", path, true});
			}
			for (size_t at = 0; at < ctrls.size();) {
				size_t comma = std::min(ctrls.find(',', at), ctrls.size());
				if (ctrls.compare(at, comma - at, "cpu") == 0) {
					dirs.push_back({"/sys/fs/cgroup/cpu", path, false});
					dirs.push_back({"/sys/fs/cgroup/cpu,cpuacct", path, false});
				}
				at = comma + 1;
			}
		}
		std::fclose(f);
		size_t best = 0;
		for (auto &w : dirs)
			for (std::string p = w.path;; p.resize(p.rfind('/'))) {
				size_t n = dir_quota(w.mount + p, w.v2);
				if (n)
					best = best ? std::min(best, n) : n;
				if (p.empty())
					break;
			}
		return best;
	} catch (...) {
		return 0;
	}
}

} /* namespace */

/*
 * Workers for a pool: the CPUs criu may run on (its affinity mask), fewer
 * under a cgroup CPU quota.  Read once: the answer does not change during
 * a dump, and every page image asks.
 */
size_t page_workers() noexcept
{
	static const size_t n = count_page_workers();
	return n;
}

size_t count_page_workers() noexcept
{
	cpu_set_t set;
	size_t cpus = 0;
	if (!sched_getaffinity(0, sizeof(set), &set))
		cpus = static_cast<size_t>(CPU_COUNT(&set));
	if (!cpus)
		cpus = std::max(1u, std::thread::hardware_concurrency());
	size_t quota = cgroup_cpus();
	if (quota)
		cpus = std::min(cpus, quota);
	return std::clamp<size_t>(cpus, 1, kMaxWorkers);
}

/*
 * The dump's pipeline (PagePool::seal_pipe, append_pipe).  Pages arrive as
 * runs (one a call) and are cut into pieces, numbered on across runs;
 * piece k lives in slot k % kRingPieces of the stage while it is read from
 * its run's pipe, sealed in place and written out.  Any thread may claim
 * the next piece of the run under way: it reads it (one reader at a time,
 * so pieces are read in order), then seals it outside the lock.  One
 * thread at a time writes, in order, as many sealed pieces at once as are
 * ready.  A piece can be claimed once the piece that last used its slot
 * is written.
 *
 * A run returns once its pages are all read from the pipe (which CRIU then
 * reuses) when the pool writes behind: the helpers go on sealing and
 * writing while CRIU reads the next run, and flush() waits for the last
 * write.  Otherwise (a page server's socket, whose protocol interleaves
 * pages with commands; the tests' seal_pipe) a run returns once all its
 * pieces are written, and only the calling thread writes.
 *
 * In a compressing checkpoint each piece is a region: compressed and
 * sealed into the second half of the stage when it shrinks, else sealed
 * page by page in place; the writer appends each region's record.
 */
struct Piece {
	uint64_t vaddr = 0, index = 0, region = 0;
	size_t len = 0;
	bool regions = false;  /* a region record for it, else its tags alone */
	bool compress = false; /* may be compressed */
	size_t stored = 0;     /* compressed and sealed length, 0: XTS */
	uint8_t *tags_out = nullptr; /* seal_pipe: the caller's tags; else into the records */
	std::array<uint8_t, kRingPiecePages * kPageTagLen> tags{};
};

class SealRing {
public:
	explicit SealRing(std::span<PageCipher> helpers) : helpers_(helpers), owner_(getpid()) {}
	SealRing(const SealRing &) = delete;
	SealRing &operator=(const SealRing &) = delete;
	~SealRing()
	{
		{
			std::unique_lock<std::mutex> lk(mu_);
			/* Nothing more is written: pieces not yet out are dropped. */
			if (end_ > written_)
				fail(Status::error(ECANCELED, "pages dropped unwritten"));
			stop_ = true;
			cv_.notify_all();
			cv_.wait(lk, [&] { return busy_ == 0 && !writing_; });
		}
		for (auto &t : threads_)
			t.join();
		Stage::give(stage_);
	}

	struct Run {
		int in;
		uint64_t vaddr, index, region;
		size_t len;
		bool regions, compress;
		uint8_t *tags_out; /* seal_pipe's tags, or nullptr */
	};
	/* The sink and whether it may be called on helpers after run() returned. */
	void set_sink(PagePool::Sink sink, bool behind)
	{
		std::unique_lock<std::mutex> lk(mu_);
		/* A helper may be calling the one it replaces. */
		cv_.wait(lk, [&] { return !writing_; });
		sink_ = std::move(sink);
		behind_ = behind;
	}
	Status run(PageCipher &own, const Run &r);
	/* Every piece written (or the first error). */
	Status flush();

	/* In a child forked while the helpers ran: they are not here to join. */
	bool forked() const noexcept { return owner_ != getpid(); }
	/* The pagetags plaintext of the pieces written (after flush()). */
	const std::vector<uint8_t> &records() const noexcept { return records_; }

private:
	void start_helpers() noexcept;
	void helper(PageCipher &c) noexcept;
	bool work_one(PageCipher &c, std::unique_lock<std::mutex> &lk) noexcept;
	bool write_some(std::unique_lock<std::mutex> &lk) noexcept;
	void fail(Status s) noexcept;

	bool claimable() const noexcept
	{
		return !failed_ && !reading_ && next_ < run_end_ && next_ < written_ + kRingPieces;
	}
	bool sealed(size_t k) const noexcept { return sealed_[k % kRingPieces] == k + 1; }
	bool writable() const noexcept { return !failed_ && !writing_ && written_ < end_ && sealed(written_); }
	Piece &piece(size_t k) noexcept { return pieces_[k % kRingPieces]; }
	uint8_t *slot(size_t k) noexcept { return stage_->data() + (k % kRingPieces) * kRingPieceLen; }
	uint8_t *cslot(size_t k) noexcept { return stage_->data() + kStageLen + (k % kRingPieces) * kRingPieceLen; }
	void add_record(const Piece &p);

	std::span<PageCipher> helpers_;
	std::vector<uint8_t> records_; /* the pagetags plaintext, in the order written */
	std::vector<std::thread> threads_;
	bool started_ = false;
	pid_t owner_;
	Stage *stage_ = nullptr;
	PagePool::Sink sink_;
	bool behind_ = false;

	std::mutex mu_;
	std::condition_variable cv_; /* any change below */
	bool stop_ = false;

	/* Pieces are numbered on across runs. */
	const Run *run_ = nullptr; /* the run under way, during run() */
	size_t run_first_ = 0;	   /* its first piece */
	size_t run_end_ = 0;	   /* after its last piece */
	size_t end_ = 0;	   /* after the last piece of any run */
	size_t next_ = 0;	   /* the next piece to claim */
	bool reading_ = false;	   /* piece next_ - 1 is being read from the pipe */
	bool writing_ = false;	   /* a thread is writing pieces from written_ on */
	size_t written_ = 0;	   /* pieces written out */
	size_t busy_ = 0;	   /* threads with a claimed piece */
	std::array<size_t, kRingPieces> sealed_{}; /* per slot: 1 + the number of the piece sealed there */
	std::array<Piece, kRingPieces> pieces_{};
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
		/* Fewer helpers (or none): the caller seals what they do not. */
	}
	pthread_sigmask(SIG_SETMASK, &old, nullptr);
}

void SealRing::fail(Status s) noexcept
{
	if (!failed_) {
		failed_ = true;
		error_ = std::move(s);
	}
	cv_.notify_all();
}

/* Claim, read and seal the next piece; false when none can be claimed now.  lk is held on entry and on return. */
bool SealRing::work_one(PageCipher &c, std::unique_lock<std::mutex> &lk) noexcept
{
	if (!claimable())
		return false;
	size_t k = next_++;
	const Run &r = *run_;
	size_t j = k - run_first_;
	Piece &p = piece(k);
	p.len = std::min(kRingPieceLen, r.len - j * kRingPieceLen);
	p.vaddr = r.vaddr + j * kRingPieceLen;
	p.index = r.index + j * kRingPiecePages;
	p.region = r.region + j;
	p.regions = r.regions;
	p.compress = r.compress;
	p.stored = 0;
	p.tags_out = r.tags_out ? r.tags_out + j * kRingPiecePages * kPageTagLen : nullptr;
	std::span<uint8_t> data{slot(k), p.len};
	/* Plaintext is only ever in the first half (the second holds what was compressed and sealed). */
	stage_->used(k % kRingPieces, p.len);
	int in = r.in;
	reading_ = true;
	busy_++;
	lk.unlock();

	Status s;
	try {
		auto got = read_full(in, data);
		if (!got.ok())
			s = std::move(got).status().with_context("can't read pages from the pipe");
		else if (got.value() != data.size())
			s = Status::error(EIO, "short read of pages from the pipe (" + std::to_string(got.value()) + " of " +
						       std::to_string(data.size()) + " bytes)");
	} catch (...) {
		s = Status::error(ENOMEM, "out of memory");
	}

	lk.lock();
	reading_ = false;
	cv_.notify_all(); /* the next piece can be read; the run may be all read */
	if (s.ok()) {
		lk.unlock();
		try {
			auto tags = std::span<uint8_t>(p.tags).first(data.size() / kPageSize * kPageTagLen);
			if (p.compress) {
				auto n = c.seal_region(p.region, p.vaddr, p.index, data, {cslot(k), data.size() - 1});
				if (n.ok())
					p.stored = n.value();
				else
					s = std::move(n).status();
			}
			if (s.ok() && !p.stored)
				s = c.seal(p.vaddr, p.index, data, tags);
		} catch (...) {
			s = Status::error(ENOMEM, "out of memory");
		}
		lk.lock();
	}
	if (s.ok())
		sealed_[k % kRingPieces] = k + 1;
	else
		fail(std::move(s));
	busy_--;
	cv_.notify_all();
	return true;
}

/* A region's record (u32 pages, u32 stored, then an XTS region's tags), or a piece's tags alone. */
void SealRing::add_record(const Piece &p)
{
	size_t pages = p.len / kPageSize;
	auto tags = std::span<const uint8_t>(p.tags).first(pages * kPageTagLen);
	if (p.tags_out) {
		std::copy(tags.begin(), tags.end(), p.tags_out);
		return;
	}
	if (p.regions) {
		put_u32(records_, static_cast<uint32_t>(pages));
		put_u32(records_, static_cast<uint32_t>(p.stored));
		if (p.stored)
			return;
	}
	put_bytes(records_, tags);
}

/* Write the sealed pieces from written_ on that lie together (a compressed one alone); false if none is ready. */
bool SealRing::write_some(std::unique_lock<std::mutex> &lk) noexcept
{
	if (!writable())
		return false;
	size_t w = written_, n = 1;
	size_t bytes = piece(w).stored ? piece(w).stored : piece(w).len;
	/* Slots are contiguous, pieces only while they fill theirs (a run's last may not). */
	while (!piece(w).stored && n < kMaxWritePieces && w + n < end_ && (w + n) % kRingPieces &&
	       piece(w + n - 1).len == kRingPieceLen && sealed(w + n) && !piece(w + n).stored)
		bytes += piece(w + n++).len;
	std::span<const uint8_t> data{piece(w).stored ? cslot(w) : slot(w), bytes};
	writing_ = true;
	lk.unlock();
	Status s;
	try {
		for (size_t j = 0; j < n; j++)
			add_record(piece(w + j));
		s = sink_(data);
	} catch (...) {
		s = Status::error(ENOMEM, "out of memory");
	}
	lk.lock();
	writing_ = false;
	if (s.ok())
		written_ += n;
	else
		fail(std::move(s));
	cv_.notify_all();
	return true;
}

void SealRing::helper(PageCipher &c) noexcept
{
	std::unique_lock<std::mutex> lk(mu_);
	while (!stop_) {
		if (work_one(c, lk))
			continue;
		if (behind_ && write_some(lk))
			continue;
		cv_.wait(lk);
	}
}

Status SealRing::run(PageCipher &own, const Run &r)
{
	if (r.len == 0)
		return {};
	std::unique_lock<std::mutex> lk(mu_);
	if (failed_)
		return error_;
	if (!stage_) {
		stage_ = Stage::take();
		if (!stage_)
			return Status::error(ENOMEM, "can't map a buffer for pages");
	}
	size_t n = (r.len + kRingPieceLen - 1) / kRingPieceLen;
	run_ = &r;
	run_first_ = end_;
	run_end_ = end_ = end_ + n;
	if (end_ - written_ >= kMinHelperPieces && !started_)
		start_helpers();
	cv_.notify_all();

	/* Writing behind: until every piece of the run is read; else until every one is written. */
	auto done = [&] { return failed_ || (behind_ ? next_ == run_end_ && !reading_ : written_ == run_end_); };
	while (!done()) {
		if (work_one(own, lk))
			continue;
		if (write_some(lk))
			continue;
		cv_.wait(lk);
	}
	/* No more claims of this run. */
	run_end_ = next_;
	if (!failed_) {
		run_ = nullptr;
		return {};
	}
	cv_.wait(lk, [&] { return !reading_; });
	run_ = nullptr;
	if (behind_)
		return error_; /* and so is every later run, and flush() */
	/* Nothing is behind: drop the run's pieces, and the next run starts afresh. */
	cv_.wait(lk, [&] { return busy_ == 0 && !writing_; });
	end_ = written_ = next_;
	stage_->wipe();
	failed_ = false;
	return std::exchange(error_, Status{});
}

Status SealRing::flush()
{
	std::unique_lock<std::mutex> lk(mu_);
	while (!failed_ && written_ < end_) {
		if (write_some(lk))
			continue;
		cv_.wait(lk);
	}
	cv_.wait(lk, [&] { return busy_ == 0 && !writing_; });
	if (failed_) {
		/* Pieces read but not written: plaintext, some of them. */
		if (stage_)
			stage_->wipe();
		return error_;
	}
	return {};
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
		behind_ = o.behind_;
		pages_ = o.pages_;
		nregions_ = o.nregions_;
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
	size_t n = page_workers();
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
	if (behind_)
		return invalid_argument("a pool that writes behind appends its pages (append_pipe)");
	if (!ring_)
		ring_ = std::make_unique<SealRing>(std::span<PageCipher>(workers_).subspan(1));
	ring_->set_sink(out, false);
	SealRing::Run r{in, vaddr, index, 0, len, false, false, tags.data()};
	return ring_->run(workers_[0], r);
}

Status PagePool::append_pipe(int in, const Sink &out, uint64_t vaddr, size_t len)
{
	if (len % kPageSize)
		return invalid_argument("page data must be whole 4096-byte pages");
	size_t n = len / kPageSize;
	if (!ring_)
		ring_ = std::make_unique<SealRing>(std::span<PageCipher>(workers_).subspan(1));
	ring_->set_sink(out, behind_);
	SealRing::Run r{in, vaddr, pages_, nregions_, len, regions_on_, regions_on_ && !fixed_, nullptr};
	CRIUSEC_TRY(ring_->run(workers_[0], r));
	pages_ += n;
	nregions_ += (n + kRegionPages - 1) / kRegionPages;
	return {};
}

Status PagePool::flush()
{
	return ring_ ? ring_->flush() : Status{};
}

const std::vector<uint8_t> &PagePool::index() const noexcept
{
	static const std::vector<uint8_t> none;
	return ring_ ? ring_->records() : none;
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
