/*
 * The C handle behind struct criusec_ctx: the C++ context plus the views
 * criusec_ctx_export() hands out (they must live as long as the handle).
 * Internal: for capi.cpp, and for tests and fuzzers that need a
 * deterministic context.
 */
#pragma once

#include <memory>
#include <vector>

#include "criusec.h"
#include "ctx.h"
#include "page_ids.h"

struct criusec_ctx {
	explicit criusec_ctx(criusec::Ctx c) : ctx(std::move(c)) {}
	criusec::Ctx ctx;
	/* What the last export handed out; valid until the next export or seal. */
	std::vector<criusec_recipient> exported;
	std::vector<criusec_blob> exported_certs;
	/* A dump's: the page image ids written (criusec_ctx_claim_pages_id). */
	std::unique_ptr<criusec::PageIds> page_ids;
};

/* The C header as the engine's view (no copy: spans into *hdr). */
[[nodiscard]] criusec::Status header_view(const criusec_header *hdr, criusec::HeaderView &v);
