/*
 * C functions of the engine for its own unit tests and fuzzers only:
 * CRIU's C code never includes this (it has criusec.h).  They reach the
 * stream and page ciphers in ways CRIU does not: a stream opened from
 * memory, pages sealed a run at a time with the caller holding the tags.
 */
#pragma once

#include "criusec.h"

#ifdef __cplusplus
extern "C" {
#endif

/* criusec_stream_open_fd() on memory: *out is malloc()ed, the caller frees it. */
int criusec_stream_open_buf(struct criusec_ctx *ctx, const char *kind, const char *name, const void *in, size_t in_len,
			    uint8_t **out, size_t *out_len, const struct criusec_stream_info *expect);

/*
 * Seal a run of pages in place: page i of the run starts at vaddr + i *
 * 4096 and is number index + i; len is a multiple of 4096; tags gets len /
 * 256 bytes, one tag per page.  Large runs are shared between a few
 * threads, all joined before this returns.
 */
int criusec_pages_seal(struct criusec_pages *p, uint64_t vaddr, uint64_t index, void *pages, size_t len,
		       uint8_t *tags);
/*
 * The same for len bytes of pages read from the pipe in, handed in order
 * to sink as criusec_pages_append_pipe() does, the tags into tags.  Not in
 * a checkpoint that compresses, nor on a pool that writes behind.
 */
int criusec_pages_seal_pipe(struct criusec_pages *p, int in, uint64_t vaddr, uint64_t index, size_t len, uint8_t *tags,
			    criusec_pages_sink sink, void *sink_arg);

#ifdef __cplusplus
}
#endif
