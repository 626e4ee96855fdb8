// SPDX-License-Identifier: GPL-2.0-only
/*
 * criusec: criu dump --page-server under --encrypt, both ends.  The page
 * server writes pagemap-N.img and pages-N.img on its side, and never holds
 * the checkpoint key.  The pages leave the dump encrypted, their tags stay
 * with the dump (pagetags-N.img, in its manifest with the remote pagemap);
 * the page server seals the pagemap under a grant for that image alone,
 * and the dump's manifest records the digest of the entries it sent, so a
 * page server that drops, adds or moves an entry is caught on restore.
 * Needs --tls: the grant is a key, and the entries travel in the protocol.
 * The wire I/O stays in page-xfer.c.
 */
#include <fcntl.h>
#include <stdio.h>
#include <string.h>

#include "criusec.h"
#include "criusec-glue.h"
#include "criusec-layer.h"
#include "cr_options.h"
#include "image-desc.h"
#include "log.h"
#include "servicefd.h"
#include "tls.h"
#include "util.h"
#include "common/xmalloc.h"

#undef LOG_PREFIX
#define LOG_PREFIX "criusec: "

/*
 * criu page-server: the grant a dump sent for the pagemap it opens next
 * (PS_IOV_CRIUSEC_GRANT), until that image is opened.
 */
static struct {
	uint8_t *grant;
	size_t len;
	int type;
	char name[64];
	bool used; /* the last open took it: the dump waits for the pages image's id */
} ps_grant;

/* A grant is a key: in secret memory (criusec_secret_map()), wiped when freed. */
void criusec_grant_free(uint8_t *grant, size_t len)
{
	criusec_secret_unmap(grant, len ?: 1);
}

/* The page server's connection is TLS when --tls is given. */
ssize_t criusec_ps_send_all(int sk, const void *buf, size_t n)
{
	size_t done = 0;

	if (!opts.tls)
		return write_all(sk, buf, n);
	while (done < n) {
		ssize_t ret = tls_send((const uint8_t *)buf + done, n - done, 0);

		if (ret < 0)
			return -1;
		done += ret;
	}
	return done;
}

/* The name of the pagemap image the page server opens (fd_type, img_id). */
static int pagemap_name(int fd_type, unsigned long img_id, char *buf, size_t len)
{
	if (fd_type != CR_FD_PAGEMAP && fd_type != CR_FD_SHMEM_PAGEMAP) {
		pr_err("Unexpected image type %d for the page server\n", fd_type);
		return -1;
	}
	if (snprintf(buf, len, imgset_template[fd_type].fmt, img_id) >= (int)len) {
		pr_err("Pagemap name too long\n");
		return -1;
	}
	return 0;
}

int criusec_ps_grant(int fd_type, unsigned long img_id, uint8_t *grant, size_t *len)
{
	char name[sizeof(ps_grant.name)];

	if (!criusec_dump_ctx)
		return 0;
	if (pagemap_name(fd_type, img_id, name, sizeof(name)))
		return -1;
	if (criusec_stream_grant(criusec_dump_ctx, criusec_kind_of(fd_type), name, grant, len)) {
		pr_err("%s: can't make its grant for the page server: %s\n", name, criusec_last_error());
		return -1;
	}
	return 1;
}

int criusec_ps_opened(int sk, int fd_type, unsigned long img_id, uint32_t pages_id)
{
	char name[sizeof(ps_grant.name)], pages[64];
	struct page_img *p;

	if (pagemap_name(fd_type, img_id, name, sizeof(name)))
		return -1;
	/* One image per id: the page cipher's safety rests on it (the engine's rule). */
	if (criusec_ctx_claim_pages_id(criusec_dump_ctx, pages_id)) {
		pr_err("The page server answered pages image %u: %s\n", pages_id, criusec_last_error());
		return -1;
	}
	snprintf(pages, sizeof(pages), imgset_template[CR_FD_PAGES].fmt, pages_id);
	criusec_page_forget(sk);
	p = criusec_page_new(sk, pages, criusec_dump_ctx);
	if (!p)
		return -1;
	p->in_imgdir = true;
	p->remote = true;
	/* The page server counts the pages it receives: they keep their size. */
	criusec_pages_keep_page_size(p->pc);
	p->dfd = fcntl(get_service_fd(IMG_FD_OFF), F_DUPFD_CLOEXEC, 0);
	p->pm_kind = xstrdup(criusec_kind_of(fd_type));
	p->pm_name = xstrdup(name);
	p->pmd = criusec_pagemap_digest_new(pages_id);
	if (p->dfd < 0 || !p->pm_kind || !p->pm_name || !p->pmd) {
		pr_perror("%s: can't follow the page server's images", pages);
		criusec_page_forget(sk);
		return -1;
	}
	pr_info("Page server writes %s and %s (sealed for it)\n", name, pages);
	return 0;
}

int criusec_ps_entry(int sk, uint64_t vaddr, uint32_t nr_pages, uint32_t flags)
{
	struct page_img *p = criusec_page_lookup(sk);

	if (!p || !p->pmd)
		return 0;
	if (criusec_pagemap_digest_add(p->pmd, vaddr, nr_pages, flags)) {
		pr_err("%s: %s\n", p->pm_name, criusec_last_error());
		return -1;
	}
	return 0;
}

void criusec_ps_closed(int sk)
{
	criusec_page_img_closed(sk);
}

int criusec_ps_take_grant(int fd_type, unsigned long img_id, const uint8_t *grant, size_t len)
{
	if (ps_grant.grant)
		criusec_grant_free(ps_grant.grant, ps_grant.len);
	ps_grant.grant = NULL;
	if (pagemap_name(fd_type, img_id, ps_grant.name, sizeof(ps_grant.name)))
		return -1;
	criusec_holding_keys();
	ps_grant.grant = criusec_secret_map(-1, len ?: 1);
	if (!ps_grant.grant) {
		pr_perror("Can't keep the grant");
		return -1;
	}
	memcpy(ps_grant.grant, grant, len);
	ps_grant.len = len;
	ps_grant.type = fd_type;
	pr_info("The dump grants the seal of %s\n", ps_grant.name);
	return 0;
}

bool criusec_ps_parent_opaque(void)
{
	/*
	 * The page server of an encrypted dump holds no key of the parent's
	 * pagemaps (they were sealed under grants): it cannot read them, so it
	 * neither checks the holes against them nor dedups them; restore
	 * checks every hole, as every page.
	 */
	return opts.mode == CR_PAGE_SERVER && ps_grant.used;
}

bool criusec_ps_grant_used(void)
{
	bool used = ps_grant.used;

	ps_grant.used = false;
	return used;
}

/* Page server: 1 and the grant (now the caller's) if path is what it is for. */
int criusec_ps_grant_take(int type, const char *path, uint8_t **grant, size_t *len)
{
	if (!ps_grant.grant || (type != CR_FD_PAGEMAP && type != CR_FD_SHMEM_PAGEMAP))
		return 0;
	if (type != ps_grant.type || strcmp(path, ps_grant.name)) {
		pr_err("The dump granted the seal of %s, not of %s\n", ps_grant.name, path);
		return -1;
	}
	*grant = ps_grant.grant;
	*len = ps_grant.len;
	ps_grant.grant = NULL;
	ps_grant.used = true;
	return 1;
}
