#include "page_pipeline.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <new>
#include <string>
#include <utility>

#include <pthread.h>
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include "bytes.h"
#include "io.h"

namespace criusec {

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

/* Seal piece k in place (a region: compressed into the second half when that shrinks it). */
Status SealRing::seal_piece(PageCipher &c, size_t k) noexcept
{
	Piece &p = piece(k);
	std::span<uint8_t> data{slot(k), p.len};
	try {
		auto tags = std::span<uint8_t>(p.tags).first(data.size() / kPageSize * kPageTagLen);
		if (p.compress) {
			auto n = c.seal_region(p.region, p.vaddr, p.index, data, {cslot(k), data.size() - 1});
			if (!n.ok())
				return std::move(n).status();
			p.stored = n.value();
		}
		if (!p.stored)
			return c.seal(p.vaddr, p.index, data, tags);
		return {};
	} catch (...) {
		return Status::error(ENOMEM, "out of memory");
	}
}

/* A piece sealed (or not): lk held. */
void SealRing::sealed_one(size_t k, Status s, bool quiet) noexcept
{
	if (s.ok())
		sealed_[k % kRingPieces] = k + 1;
	else
		fail(std::move(s));
	busy_--;
	if (!quiet || failed_)
		cv_.notify_all();
}

/*
 * Claim, read and seal the next piece; false when none can be claimed now.
 * With defer, a piece read is left for a helper to seal (wakened once a
 * few are waiting).  lk is held on entry and on return.
 */
bool SealRing::work_one(PageCipher &c, std::unique_lock<std::mutex> &lk, bool quiet, bool defer) noexcept
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
	if (!quiet)
		cv_.notify_all(); /* the next piece can be read; the run may be all read */
	if (s.ok() && defer) {
		unsealed_[k % kRingPieces] = k + 1;
		busy_--;
		/* A wake-up costs more than a page's crypto: only for a few pieces at once. */
		if (++nunsealed_ >= kWakeBatch && idle_)
			cv_.notify_all();
		return true;
	}
	if (s.ok()) {
		lk.unlock();
		s = seal_piece(c, k);
		lk.lock();
	}
	sealed_one(k, std::move(s), quiet);
	return true;
}

/* Seal the first piece left read and unsealed; false if there is none.  lk is held on entry and on return. */
bool SealRing::seal_unsealed(PageCipher &c, std::unique_lock<std::mutex> &lk) noexcept
{
	if (!nunsealed_ || failed_)
		return false;
	size_t k = written_;
	while (k < next_ && unsealed_[k % kRingPieces] != k + 1)
		k++;
	if (k == next_)
		return false;
	unsealed_[k % kRingPieces] = 0;
	nunsealed_--;
	busy_++;
	lk.unlock();
	Status s = seal_piece(c, k);
	lk.lock();
	sealed_one(k, std::move(s), false);
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

/*
 * Copy n sealed pieces (bytes in all) from written_ on into the gathering
 * buffer, which has room for them, under writing_ so that they go in
 * order; their slots are free again on return.  lk is held on entry and on
 * return.
 */
void SealRing::gather(std::unique_lock<std::mutex> &lk, size_t n, size_t bytes, bool quiet) noexcept
{
	size_t w = written_, at = gather_len_[cur_];
	uint8_t *to = gbuf(cur_) + at;
	writing_ = true;
	lk.unlock();
	Status s;
	try {
		for (size_t j = 0; j < n; j++) {
			const Piece &p = piece(w + j);
			size_t len = p.stored ? p.stored : p.len;
			std::memcpy(to, p.stored ? cslot(w + j) : slot(w + j), len);
			to += len;
			add_record(p);
		}
	} catch (...) {
		s = Status::error(ENOMEM, "out of memory");
	}
	lk.lock();
	writing_ = false;
	if (s.ok()) {
		gather_len_[cur_] = at + bytes;
		written_ += n;
	} else {
		fail(std::move(s));
	}
	if (!quiet)
		cv_.notify_all();
}

/*
 * Hand the gathering buffer to the sink; pieces gather into the other one
 * meanwhile (empty: one buffer is written at a time, and this one was
 * filled after it).  No flush under way, nothing being gathered; lk is held
 * on entry and on return.
 */
void SealRing::flush_gathered(std::unique_lock<std::mutex> &lk) noexcept
{
	size_t g = cur_;
	cur_ ^= 1;
	flushing_ = true;
	lk.unlock();
	Status s;
	try {
		s = sink_({gbuf(g), gather_len_[g]});
	} catch (...) {
		s = Status::error(ENOMEM, "out of memory");
	}
	lk.lock();
	gather_len_[g] = 0;
	flushing_ = false;
	if (!s.ok())
		fail(std::move(s));
	/* Whatever waits for a flush to end (a full buffer, a large write, flush()) goes on. */
	cv_.notify_all();
}

/*
 * Write the sealed pieces from written_ on that lie together (a compressed
 * one alone): gathered when they are short and the pool writes behind,
 * else handed to the sink as they are, after all that was gathered.  False
 * if none is ready or they must wait for a flush.
 */
bool SealRing::write_some(std::unique_lock<std::mutex> &lk, bool quiet) noexcept
{
	if (!writable())
		return false;
	size_t w = written_, n = 1;
	size_t bytes = piece(w).stored ? piece(w).stored : piece(w).len;
	/* Slots are contiguous, pieces only while they fill theirs (a run's last may not). */
	while (!piece(w).stored && n < kMaxWritePieces && w + n < end_ && (w + n) % kRingPieces &&
	       piece(w + n - 1).len == kRingPieceLen && sealed(w + n) && !piece(w + n).stored)
		bytes += piece(w + n++).len;
	/* Less than a piece that fills its slot: a write of its own would cost more than the copy. */
	if (behind_ && bytes < kRingPieceLen && gather_len_[cur_] + bytes <= kGatherLen) {
		gather(lk, n, bytes, quiet);
		return true;
	}
	/* What was gathered goes out first (a full buffer, or before a large write), one buffer at a time. */
	if (flushing_)
		return false;
	if (gather_len_[cur_]) {
		flush_gathered(lk);
		return true;
	}
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
	if (!quiet)
		cv_.notify_all();
	return true;
}

void SealRing::helper(PageCipher &c) noexcept
{
	std::unique_lock<std::mutex> lk(mu_);
	while (!stop_) {
		if (seal_unsealed(c, lk))
			continue;
		if (work_one(c, lk))
			continue;
		if (behind_ && write_some(lk))
			continue;
		idle_++;
		cv_.wait(lk);
		idle_--;
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
	/*
	 * One piece (a scattered dump's runs are a page or a few): the caller
	 * reads, seals and writes it itself, and wakes no helper; their
	 * hand-offs cost more than its crypto.  A helper busy with an earlier
	 * piece still wakes the caller when it is done.
	 */
	bool quiet = n == 1;
	if (!quiet)
		cv_.notify_all();
	/*
	 * Writing behind, a one-piece run is read here and sealed by a helper
	 * while CRIU goes on to the next: 14,000 scattered pages take both
	 * cores, not one.
	 */
	bool defer = quiet && behind_ && !threads_.empty();

	/* Writing behind: until every piece of the run is read; else until every one is written. */
	auto done = [&] { return failed_ || (behind_ ? next_ == run_end_ && !reading_ : written_ == run_end_); };
	while (!done()) {
		if (work_one(own, lk, quiet, defer))
			continue;
		if (seal_unsealed(own, lk))
			continue;
		if (write_some(lk, quiet))
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
	unsealed_.fill(0);
	nunsealed_ = 0;
	stage_->wipe();
	failed_ = false;
	return std::exchange(error_, Status{});
}

Status SealRing::flush()
{
	std::unique_lock<std::mutex> lk(mu_);
	if (nunsealed_)
		cv_.notify_all(); /* fewer than a wake-up's worth, left for the helpers */
	while (!failed_ && written_ < end_) {
		if (write_some(lk))
			continue;
		cv_.wait(lk);
	}
	/* What was gathered goes out last. */
	while (!failed_ && gathered()) {
		if (!flushing_ && !writing_)
			flush_gathered(lk);
		else
			cv_.wait(lk);
	}
	cv_.wait(lk, [&] { return busy_ == 0 && !writing_ && !flushing_; });
	if (failed_) {
		/* Pieces read but not written: plaintext, some of them. */
		if (stage_)
			stage_->wipe();
		return error_;
	}
	return {};
}

} /* namespace criusec */
