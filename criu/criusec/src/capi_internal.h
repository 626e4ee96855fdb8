/*
 * The C handle behind struct criusec_ctx: the C++ context plus the views
 * criusec_ctx_export() hands out (they must live as long as the handle).
 * Internal: for capi.cpp, and for tests and fuzzers that need a
 * deterministic context.
 */
#pragma once

#include <vector>

#include "criusec.h"
#include "ctx.h"

struct criusec_ctx {
	explicit criusec_ctx(criusec::Ctx c) : ctx(std::move(c)) {}
	criusec::Ctx ctx;
	/* One array per distinct export; each stays valid until the handle is freed. */
	std::vector<std::vector<criusec_recipient>> exported;
};
