// SPDX-License-Identifier: GPL-2.0-only
/*
 * criusec: the pages the restorer reads itself, checked for it.
 *
 * The restorer reads pages straight into place (VMAs that are not
 * premapped, e.g. private hugetlb) and cannot check encrypted ones: give it
 * the verified plaintext instead, at the same offsets.  With --auto-dedup
 * the restorer would punch the memfd, so the image is punched here (once
 * the restore succeeded).  pagemap_render_iovec() calls this.
 */
#include <fcntl.h>
#include <unistd.h>
#include <linux/falloc.h>
#include <sys/uio.h>

#include "types.h"
#include "cr_options.h"
#include "pagemap.h"
#include "criusec-glue.h"
#include "log.h"

int criusec_unseal_vma_ios(struct list_head *from, int fd)
{
	struct page_read_iov *piov;
	unsigned long total = 0;
	off_t off;
	int memfd, i, ret;

	memfd = criusec_pages_plain_begin(fd);
	if (memfd < 0)
		return -1;
	list_for_each_entry(piov, from, l) {
		off = piov->from;
		for (i = 0; i < piov->nr; i++) {
			unsigned long va = (unsigned long)piov->to[i].iov_base, len = piov->to[i].iov_len;

			pr_debug("criusec: checking %#lx-%#lx (at %#llx) for the restorer\n", va, va + len,
				 (unsigned long long)off);
			if (criusec_pages_plain_copy(fd, memfd, off, va, len))
				goto err;
			off += len;
			total += len;
		}
		if (!opts.auto_dedup)
			continue;
		ret = criusec_punch(fd, piov->from, off - piov->from);
		if (ret < 0)
			goto err;
		if (ret == 0 && fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, piov->from, off - piov->from)) {
			pr_perror("Error punching hole");
			goto err;
		}
	}
	pr_info("criusec: %lu bytes of pages the restorer reads checked into a memfd\n", total);
	return criusec_pages_plain_end(fd, memfd);
err:
	pr_err("criusec: can't check the pages the restorer reads\n");
	close(memfd);
	return -1;
}
