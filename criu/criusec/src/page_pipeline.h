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
 *
 * Writing behind, pieces written a few pages at a time (a scattered dump's,
 * compressed regions) are gathered into one of two buffers, and a full one
 * goes to the sink while the next pieces gather into the other: their
 * slots are free again at once, so the pipe is read and the pages sealed
 * while the file system takes a megabyte, not after.
 */
#pragma once

#include <array>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <new>
#include <span>
#include <thread>
#include <utility>
#include <vector>

#include <pthread.h>
#include <sys/mman.h>
#include <sys/types.h>
#include <unistd.h>

#include "page_cipher.h"
#include "pages.h"
#include "status.h"

namespace criusec {

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
constexpr size_t kCompressedLen = kStageLen;
/* Then the two gathering buffers (ciphertext only). */
constexpr size_t kGatherLen = 1 << 20;
constexpr size_t kStageMapLen = kStageLen + kCompressedLen + 2 * kGatherLen;
static_assert(kRingPiecePages == kRegionPages, "a ring piece is a region");
constexpr size_t kMaxWritePieces = 4;
static_assert(kGatherLen >= kRingPieceLen, "a short batch always fits an empty gathering buffer");
/* Runs shorter than this never start the helpers (a small image pays no thread). */
constexpr size_t kMinHelperPieces = 2;
/* Idle helpers are woken for pieces left unsealed once this many wait (one piece is a page or a few). */
constexpr size_t kWakeBatch = 4;

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
		join_warm();
		/* try_lock: in a child forked while a thread held the lock, it stays held. */
		std::unique_lock<std::mutex> lk(spare_mu_, std::try_to_lock);
		if (lk.owns_lock() && spare_)
			return std::exchange(spare_, nullptr);
		return map();
	}
	/*
	 * Map and fault in the spare stage on a thread of its own, while the
	 * caller goes on (a dump seizing its tasks): its first run then starts
	 * on memory already there, where faulting in 8 MiB costs milliseconds
	 * in a VM.  The next take() waits for it.  Only in this process: a
	 * child forked meanwhile maps its own.
	 */
	static void warm() noexcept
	{
		if (warm_pid_ == getpid())
			return;
		{
			std::unique_lock<std::mutex> lk(spare_mu_, std::try_to_lock);
			if (!lk.owns_lock() || spare_)
				return;
		}
		if (pthread_create(&warm_thread_, nullptr, warm_main, nullptr) == 0)
			warm_pid_ = getpid();
	}
	/* Back for the next ring, wiped; unmapped if one is kept already. */
	static void give(Stage *s) noexcept
	{
		if (!s)
			return;
		s->wipe();
		std::unique_lock<std::mutex> lk(spare_mu_, std::try_to_lock);
		if (lk.owns_lock() && !spare_) {
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
	static Stage *map() noexcept
	{
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
	static void *warm_main(void *) noexcept
	{
		Stage *s = map();
		if (!s)
			return nullptr;
#ifdef MADV_POPULATE_WRITE
		if (madvise(s->p_, kStageMapLen, MADV_POPULATE_WRITE))
#endif
			for (size_t off = 0; off < kStageMapLen; off += kPageSize)
				s->p_[off] = 0;
		std::lock_guard<std::mutex> lk(spare_mu_);
		if (spare_)
			delete s;
		else
			spare_ = s;
		return nullptr;
	}
	/* A warm-up of this process is joined once; a forked child has none. */
	static void join_warm() noexcept
	{
		if (warm_pid_ != getpid())
			return;
		pthread_join(warm_thread_, nullptr);
		warm_pid_ = 0;
	}
	uint8_t *p_;
	std::array<size_t, kRingPieces> used_{};
	static inline std::mutex spare_mu_;
	static inline Stage *spare_ = nullptr;
	static inline pthread_t warm_thread_{};
	static inline pid_t warm_pid_ = 0;
	/* The one kept is wiped and unmapped at exit. */
	struct Keeper {
		~Keeper()
		{
			join_warm();
			delete std::exchange(spare_, nullptr);
		}
	};
	static inline Keeper keeper_;
};

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
			if (end_ > written_ || gathered())
				fail(Status::error(ECANCELED, "pages dropped unwritten"));
			stop_ = true;
			cv_.notify_all();
			cv_.wait(lk, [&] { return busy_ == 0 && !writing_ && !flushing_; });
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
	/*
	 * The sink and whether it may be called on helpers after run()
	 * returned.  A key names it: the same key again keeps the one set
	 * without waiting for a write under way (a scattered dump sets it per
	 * page); no key always replaces it.
	 */
	void set_sink(PagePool::Sink sink, bool behind, PagePool::SinkKey key = {})
	{
		std::unique_lock<std::mutex> lk(mu_);
		if (key.set() && key == sink_key_ && behind == behind_)
			return;
		/* A helper may be calling the one it replaces. */
		cv_.wait(lk, [&] { return !writing_ && !flushing_; });
		sink_ = std::move(sink);
		sink_key_ = key;
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
	/* quiet: the caller of a one-piece run wakes no helper for it; defer: it leaves the sealing to one. */
	bool work_one(PageCipher &c, std::unique_lock<std::mutex> &lk, bool quiet = false, bool defer = false) noexcept;
	bool seal_unsealed(PageCipher &c, std::unique_lock<std::mutex> &lk) noexcept;
	Status seal_piece(PageCipher &c, size_t k) noexcept;
	void sealed_one(size_t k, Status s, bool quiet) noexcept;
	bool write_some(std::unique_lock<std::mutex> &lk, bool quiet = false) noexcept;
	void gather(std::unique_lock<std::mutex> &lk, size_t n, size_t bytes, bool quiet) noexcept;
	void flush_gathered(std::unique_lock<std::mutex> &lk) noexcept;
	bool gathered() const noexcept { return gather_len_[0] || gather_len_[1]; }
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
	uint8_t *gbuf(size_t g) noexcept { return stage_->data() + kStageLen + kCompressedLen + g * kGatherLen; }
	void add_record(const Piece &p);

	std::span<PageCipher> helpers_;
	std::vector<uint8_t> records_; /* the pagetags plaintext, in the order written */
	std::vector<std::thread> threads_;
	bool started_ = false;
	pid_t owner_;
	Stage *stage_ = nullptr;
	PagePool::Sink sink_;
	PagePool::SinkKey sink_key_;
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
	bool writing_ = false;	   /* a thread is writing (or gathering) pieces from written_ on */
	bool flushing_ = false;	   /* a thread is writing gathering buffer 1 - cur_ */
	size_t cur_ = 0;	   /* the gathering buffer pieces go into */
	std::array<size_t, 2> gather_len_{}; /* bytes gathered in each */
	size_t written_ = 0;	   /* pieces written out */
	size_t busy_ = 0;	   /* threads with a claimed piece */
	std::array<size_t, kRingPieces> sealed_{}; /* per slot: 1 + the number of the piece sealed there */
	std::array<size_t, kRingPieces> unsealed_{}; /* per slot: 1 + the number of a piece read, left to seal */
	size_t nunsealed_ = 0;			     /* pieces left to seal */
	size_t idle_ = 0;			     /* helpers waiting */
	std::array<Piece, kRingPieces> pieces_{};
	bool failed_ = false;
	Status error_;
};

} /* namespace criusec */
