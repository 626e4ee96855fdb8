// SPDX-License-Identifier: GPL-2.0-only
/*
 * criusec: the manifest, cipher-manifest.img.  On dump, every image sealed
 * in the images directory is listed (kind, name, size, digest) as it is
 * closed; cipher.img signs the digest of the list.  On restore, the list's
 * rules: names are plain file names of their kinds, and every pagemap
 * covers exactly the pages its page image has tags for.
 */
#include <string.h>
#include <sys/mman.h>

#include "criusec.h"
#include "criusec-glue.h"
#include "criusec-layer.h"
#include "image.h"
#include "image-desc.h"
#include "log.h"
#include "magic.h"
#include "pagemap.h"
#include "protobuf.h"
#include "util.h"
#include "common/xmalloc.h"

#include "images/cipher.pb-c.h"
#include "images/pagemap.pb-c.h"

#undef LOG_PREFIX
#define LOG_PREFIX "criusec: "

/*
 * Dump side.  The manifest (names of the images sealed) lives in shared
 * memory: forked children dump namespaces and seal their images themselves.
 */
#define MANIFEST_BYTES (4 << 20)
struct manifest_rec {
	struct criusec_stream_info info; /* has_size 0: not sealed here (page server) */
	bool has_entries;		 /* a page server's pagemap: the digest of its entries */
	uint8_t entries[CRIUSEC_DIGEST_LEN];
	unsigned short klen, nlen; /* with their NULs */
	char names[];		   /* "kind\0name\0" */
};
struct manifest_shm {
	unsigned int used; /* bytes of recs[] in use */
	int failed;	   /* a seal failed somewhere: the dump must fail */
	char recs[];	   /* struct manifest_rec, one after another, aligned */
};
static struct manifest_shm *manifest;
/* What sealing cipher-manifest.img gave: its digest goes into the header. */
static struct criusec_stream_info manifest_info;

int criusec_manifest_begin(void)
{
	manifest = mmap(NULL, MANIFEST_BYTES, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (manifest == MAP_FAILED) {
		manifest = NULL;
		pr_perror("Can't map the image manifest");
		return -1;
	}
	return 0;
}

void criusec_manifest_end(void)
{
	if (manifest)
		munmap(manifest, MANIFEST_BYTES);
	manifest = NULL;
}

/* A seal failed somewhere, in this process or a child: the dump must fail. */
void criusec_manifest_fail(void)
{
	manifest->failed = 1;
}

bool criusec_manifest_failed(void)
{
	return manifest->failed;
}

/* cipher-manifest.img was sealed: what the header signs. */
void criusec_manifest_sealed(const struct criusec_stream_info *info)
{
	manifest_info = *info;
}

/*
 * info NULL: an image this dump did not seal (a page server's pagemap),
 * of which entries (may be NULL) is the digest of what it was sent.
 */
void criusec_manifest_add(const char *kind, const char *name, const struct criusec_stream_info *info,
			  const uint8_t *entries)
{
	size_t klen = strlen(kind) + 1, nlen = strlen(name) + 1;
	size_t len = ALIGN(sizeof(struct manifest_rec) + klen + nlen, 8);
	struct manifest_rec *r;
	unsigned int off;

	off = __atomic_fetch_add(&manifest->used, len, __ATOMIC_SEQ_CST);
	if (off + len > MANIFEST_BYTES - sizeof(*manifest)) {
		pr_err("Too many images for the manifest\n");
		manifest->failed = 1;
		return;
	}
	r = (struct manifest_rec *)(manifest->recs + off);
	if (info)
		r->info = *info;
	else
		memset(&r->info, 0, sizeof(r->info));
	r->has_entries = entries != NULL;
	if (entries)
		memcpy(r->entries, entries, CRIUSEC_DIGEST_LEN);
	r->klen = klen;
	r->nlen = nlen;
	memcpy(r->names, kind, klen);
	memcpy(r->names + klen, name, nlen);
}

static struct manifest_rec *manifest_next(unsigned int *off)
{
	struct manifest_rec *r;

	if (*off >= manifest->used)
		return NULL;
	r = (struct manifest_rec *)(manifest->recs + *off);
	*off += ALIGN(sizeof(*r) + r->klen + r->nlen, 8);
	return r;
}

/* Write cipher-manifest.img; digest: what sealing it gave, for the header. */
int criusec_manifest_write(uint8_t digest[CRIUSEC_DIGEST_LEN])
{
	CipherManifestEntry me = CIPHER_MANIFEST_ENTRY__INIT;
	struct manifest_rec *r;
	struct cr_img *img;
	unsigned int off = 0;
	size_t n = 0;
	int ret = -1;

	while (manifest_next(&off))
		n++;
	me.images = xmalloc(sizeof(*me.images) * (n ?: 1));
	me.kinds = xmalloc(sizeof(*me.kinds) * (n ?: 1));
	me.sizes = xmalloc(sizeof(*me.sizes) * (n ?: 1));
	me.digests = xmalloc(sizeof(*me.digests) * (n ?: 1));
	me.entries = xmalloc(sizeof(*me.entries) * (n ?: 1));
	if (!me.images || !me.kinds || !me.sizes || !me.digests || !me.entries)
		goto out;
	for (off = 0; (r = manifest_next(&off)); me.n_images++) {
		me.kinds[me.n_images] = r->names;
		me.images[me.n_images] = r->names + r->klen;
		me.sizes[me.n_images] = r->info.has_size ? r->info.size : 0;
		me.digests[me.n_images].data = r->info.digest;
		me.digests[me.n_images].len = r->info.has_size ? CRIUSEC_DIGEST_LEN : 0;
		me.entries[me.n_images].data = r->entries;
		me.entries[me.n_images].len = r->has_entries ? CRIUSEC_DIGEST_LEN : 0;
	}
	me.n_kinds = me.n_sizes = me.n_digests = me.n_entries = me.n_images;
	manifest_info.has_size = 0;
	img = open_image(CR_FD_CIPHER_MANIFEST, O_DUMP);
	if (img) {
		ret = pb_write_one(img, &me, PB_CIPHER_MANIFEST);
		close_image(img);
	}
	/* Sealed as it was closed (criusec_img_closed()), or not at all. */
	if (!ret && !manifest_info.has_size)
		ret = -1;
	if (!ret)
		memcpy(digest, manifest_info.digest, CRIUSEC_DIGEST_LEN);
out:
	xfree(me.images);
	xfree(me.kinds);
	xfree(me.sizes);
	xfree(me.digests);
	xfree(me.entries);
	return ret;
}

int criusec_manifest_index(struct dir_state *d, const char *name)
{
	size_t i;

	for (i = 0; i < d->manifest->n_images; i++)
		if (!strcmp(d->manifest->images[i], name))
			return i;
	return -1;
}

/* What a format-2 manifest records of image i; NULL when nothing (format 1, or a page server's image). */
const struct criusec_stream_info *criusec_manifest_expect(struct dir_state *d, size_t i,
							  struct criusec_stream_info *buf)
{
	CipherManifestEntry *m = d->manifest;

	if (!criusec_ctx_manifest_digest(d->ctx) || m->digests[i].len == 0)
		return NULL;
	buf->size = m->sizes[i];
	buf->has_size = 1;
	memcpy(buf->digest, m->digests[i].data, CRIUSEC_DIGEST_LEN);
	return buf;
}

/* What the header records of its manifest (format 2): the digest; NULL in format 1. */
const struct criusec_stream_info *criusec_manifest_of_header(struct dir_state *d, struct criusec_stream_info *buf)
{
	const uint8_t *digest = criusec_ctx_manifest_digest(d->ctx);

	if (!digest)
		return NULL;
	memset(buf, 0, sizeof(*buf));
	memcpy(buf->digest, digest, CRIUSEC_DIGEST_LEN);
	return buf;
}

static bool is_pagemap_kind(const char *kind)
{
	return !strcmp(kind, criusec_kind_of(CR_FD_PAGEMAP)) || !strcmp(kind, criusec_kind_of(CR_FD_SHMEM_PAGEMAP));
}

/*
 * CRIU's table of the image kinds criusec seals, for the engine's manifest
 * rules: an image kind is CRIU's printf-style template of its file names
 * ("core-%u.img"), so it is its own pattern.
 */
static const struct criusec_image_kind *kind_table(size_t *n)
{
	static struct criusec_image_kind k[CR_FD_MAX + 2];
	static size_t nk;
	int type;

	if (!nk) {
		for (type = 0; type < CR_FD_MAX; type++) {
			if (!imgset_template[type].fmt || !criusec_stream_covered(type))
				continue;
			k[nk].kind = k[nk].pattern = imgset_template[type].fmt;
			k[nk].pagemap = is_pagemap_kind(k[nk].kind);
			nk++;
		}
		k[nk].kind = PAGE_TAGS_KIND;
		k[nk++].pattern = "pagetags-%u.img";
		/* A plugin's own file name (criu_image_open() checks it). */
		k[nk].kind = CRIUSEC_PLUGIN_KIND;
		k[nk++].pattern = "%s";
	}
	*n = nk;
	return k;
}

/* The manifest's entries: well formed, and names that are plain file names of their kinds (the engine's rules). */
int criusec_manifest_valid(CipherManifestEntry *m, bool v2)
{
	const struct criusec_image_kind *kinds;
	struct criusec_manifest_entry *e;
	size_t i, nk;
	int ret;

	/* The protobuf's shape: parallel arrays of one length. */
	if (m->n_kinds != m->n_images || (v2 && (m->n_sizes != m->n_images || m->n_digests != m->n_images)) ||
	    (m->n_entries && m->n_entries != m->n_images)) {
		pr_err("cipher-manifest.img: malformed\n");
		return -1;
	}
	e = xzalloc(sizeof(*e) * (m->n_images ?: 1));
	if (!e)
		return -1;
	for (i = 0; i < m->n_images; i++) {
		e[i].kind = m->kinds[i];
		e[i].name = m->images[i];
		if (v2) {
			e[i].size = m->sizes[i];
			e[i].digest = m->digests[i].data;
			e[i].digest_len = m->digests[i].len;
		}
		if (m->n_entries) {
			e[i].entries = m->entries[i].data;
			e[i].entries_len = m->entries[i].len;
		}
	}
	kinds = kind_table(&nk);
	ret = criusec_manifest_check(e, m->n_images, v2, kinds, nk);
	xfree(e);
	if (ret)
		pr_err("%s\n", criusec_last_error());
	return ret ? -1 : 0;
}

/*
 * A pagemap's plaintext (CRIU's image: two magics, then u32-sized
 * protobufs, PagemapHead first): its pages image id, how many pages that
 * image holds for it, and the digest of its entries.
 */
static int pagemap_scan(const struct plain_img *p, const char *name, uint32_t *pages_id, uint64_t *present,
			uint8_t digest[CRIUSEC_DIGEST_LEN])
{
	struct criusec_pagemap_digest *pd = NULL;
	size_t off = 2 * sizeof(uint32_t);
	bool head = true;
	uint32_t magic[2];

	*present = 0;
	if (p->len < off)
		goto bad;
	memcpy(magic, p->data, sizeof(magic));
	if (magic[0] != IMG_COMMON_MAGIC || magic[1] != PAGEMAP_MAGIC)
		goto bad;
	while (off < p->len) {
		uint32_t sz;

		if (p->len - off < sizeof(sz))
			goto bad;
		memcpy(&sz, p->data + off, sizeof(sz));
		off += sizeof(sz);
		if (sz > p->len - off)
			goto bad;
		if (head) {
			PagemapHead *h = pagemap_head__unpack(NULL, sz, p->data + off);

			if (!h)
				goto bad;
			*pages_id = h->pages_id;
			pagemap_head__free_unpacked(h, NULL);
			pd = criusec_pagemap_digest_new(*pages_id);
			if (!pd)
				goto bad;
			head = false;
		} else {
			PagemapEntry *e = pagemap_entry__unpack(NULL, sz, p->data + off);
			uint32_t nr, flags;
			int ret;

			if (!e)
				goto bad;
			/* Entries of older CRIUs have no flags (pycriu normalises them the same way). */
			nr = e->has_nr_pages ? e->nr_pages : e->compat_nr_pages;
			flags = e->has_flags ? e->flags : (e->has_in_parent && e->in_parent ? PE_PARENT : PE_PRESENT);
			ret = criusec_pagemap_digest_add(pd, e->vaddr, nr, flags);
			pagemap_entry__free_unpacked(e, NULL);
			if (ret)
				goto bad;
			if (flags & PE_PRESENT)
				*present += nr;
		}
		off += sz;
	}
	if (head)
		goto bad;
	return criusec_pagemap_digest_final(pd, digest) ? -1 : 0;
bad:
	criusec_pagemap_digest_final(pd, NULL);
	pr_err("%s: not a pagemap image\n", name);
	return -1;
}

/*
 * Every pagemap covers exactly the pages its page image has tags (or
 * regions) for, and
 * one a page server wrote holds exactly the entries the dump sent it: a
 * page server that drops, adds or moves an entry is caught here.
 */
int criusec_manifest_check_pagemaps(struct dir_state *d)
{
	CipherManifestEntry *m = d->manifest;
	uint8_t digest[CRIUSEC_DIGEST_LEN];
	char tname[64];
	uint32_t id;
	uint64_t present, described;
	size_t i;
	int t;

	for (i = 0; i < m->n_images; i++) {
		if (!is_pagemap_kind(m->kinds[i]))
			continue;
		if (pagemap_scan(&d->plain[i], m->images[i], &id, &present, digest))
			return -1;
		if (m->n_entries && m->entries[i].len && memcmp(digest, m->entries[i].data, CRIUSEC_DIGEST_LEN)) {
			pr_err("%s: its entries are not the ones the dump sent the page server\n", m->images[i]);
			return -1;
		}
		snprintf(tname, sizeof(tname), "pagetags-%u.img", id);
		t = criusec_manifest_index(d, tname);
		if (t < 0 && present) {
			pr_err("%s: its %llu pages have no tags (%s)\n", m->images[i], (unsigned long long)present,
			       tname);
			return -1;
		}
		if (t < 0)
			continue;
		if (criusec_pages_index_pages(d->ctx, d->plain[t].data, d->plain[t].len, &described)) {
			pr_err("%s: %s\n", tname, criusec_last_error());
			return -1;
		}
		if (described != present) {
			pr_err("%s: covers %llu pages, but %s describes %llu\n", m->images[i],
			       (unsigned long long)present, tname, (unsigned long long)described);
			return -1;
		}
	}
	return 0;
}

const char *criusec_manifest_name(unsigned int *off)
{
	struct manifest_rec *r;

	if (!manifest || !(r = manifest_next(off)))
		return NULL;
	return r->names + r->klen;
}

bool criusec_criu_image_name(const char *name)
{
	int type;

	if (criusec_name_matches("pagetags-%u.img", name))
		return true;
	for (type = 0; type < CR_FD_MAX; type++)
		if (imgset_template[type].fmt && criusec_name_matches(imgset_template[type].fmt, name))
			return true;
	return false;
}
