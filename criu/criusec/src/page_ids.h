/*
 * The page images of one checkpoint, by id: each id may be written once.
 * Two page images under one id would share a page key, XTS tweaks and
 * GMAC nonces, which the page cipher's safety rests on never happening.
 * The record is in shared memory made with the dump's context, before
 * criu forks, so that every process of the dump sees every claim.
 */
#pragma once

#include <cstddef>
#include <cstdint>

#include "status.h"

namespace criusec {

class PageIds {
public:
	static constexpr size_t kMax = 4096;

	PageIds() noexcept;
	~PageIds();
	PageIds(const PageIds &) = delete;
	PageIds &operator=(const PageIds &) = delete;

	/* Claim id for this checkpoint: EEXIST if it was claimed before, ENOSPC past kMax. */
	[[nodiscard]] Status claim(uint32_t id);

private:
	struct Shared;
	Shared *shm_ = nullptr;
};

} /* namespace criusec */
