#ifndef __CR_CRIUSEC_GLUE_H__
#define __CR_CRIUSEC_GLUE_H__

/*
 * The hooks CRIU's own code calls (through patches/, one call per site),
 * implemented by the criusec-*.c files beside CRIU's; what those files
 * share among themselves is in criusec-layer.h.
 */

/* criu check: the engine's self-test, version and the AEAD it would use. */
extern int check_criusec(void);

/*
 * Dump and pre-dump (criusec-dump.c): make the checkpoint key before any
 * image is written (a no-op without --encrypt); at the end, write the
 * manifest, then cipher.img, which signs it, and fail if any image could
 * not be sealed.
 */
extern int criusec_dump_start(void);
extern int criusec_dump_finish(int ret);

/*
 * The stream layer under cr_img.  After an image file was opened (*fd, or
 * -1 with errno when it does not exist), may put a memfd in its place: the
 * plaintext to write, or the authenticated plaintext that was read.
 * Returns -1, having said why, when the image must not be used.
 */
extern int criusec_img_open(int dfd, int type, unsigned long flags, const char *path, int *fd);
/* After an image's descriptor was closed: seals what was written to it. */
extern void criusec_img_closed(int fd);

/*
 * The page cipher under page-xfer and page-read, keyed by the page image's
 * descriptor.  Each returns 0 for a page image that is not encrypted (the
 * caller does its plain I/O), -1 on failure (said why).
 */
#include <stdbool.h>
#include <sys/types.h>

extern bool criusec_pages_sealed(int fd);
/*
 * Dump: encrypt len bytes of pages from pipe (the first at vaddr), append
 * them to the image, or send them to the page server; 1 when done.
 */
extern int criusec_pages_write(int fd, int pipe, unsigned long len, unsigned long vaddr);
/* Restore: read len bytes at off, checked and decrypted; 1 when done. */
extern int criusec_pages_load(int fd, unsigned long vaddr, off_t off, void *buf, unsigned long len);
/*
 * Restore, for a page read's asynchronous reads of an encrypted image:
 * queue them (0, or -1 on failure), and read what is queued at its sync.
 */
extern int criusec_pages_queue(int fd, unsigned long vaddr, off_t off, void *buf, unsigned long len);
extern int criusec_pages_queued_read(int fd);
/* Page server: read len bytes at the current offset, verified plaintext into pipe; 1 when done. */
extern int criusec_pages_to_pipe(int fd, int pipe, unsigned long vaddr, unsigned long len);
/*
 * For the restorer, which reads pages itself and cannot check them: a
 * memfd gets the verified plaintext at the same offsets, then replaces fd.
 */
extern int criusec_pages_plain_begin(int fd);
extern int criusec_pages_plain_copy(int fd, int memfd, off_t off, unsigned long vaddr, unsigned long len);
extern int criusec_pages_plain_end(int fd, int memfd);

/*
 * criu dump --page-server under --encrypt (the wire I/O stays in page-xfer.c).
 * Dump: criusec_ps_grant() writes to grant (CRIUSEC_GRANT_MAX bytes) the
 * grant for the pagemap about to be opened on the server: 1 made, 0 not
 * encrypting.  criusec_ps_opened() registers the server's pages image
 * (its id came back with the open) under the socket, for
 * criusec_pages_write(); criusec_ps_closed() writes the tags.
 * Page server: criusec_ps_take_grant() keeps a received grant for the next
 * open; criusec_ps_grant_used() says (once) whether that open took it.
 */
#include <stdint.h>

extern int criusec_ps_grant(int fd_type, unsigned long img_id, uint8_t *grant, size_t *len);
extern int criusec_ps_opened(int sk, int fd_type, unsigned long img_id, uint32_t pages_id);
/* Each pagemap entry the dump sends the page server on sk, for the manifest. */
extern int criusec_ps_entry(int sk, uint64_t vaddr, uint32_t nr_pages, uint32_t flags);
extern void criusec_ps_closed(int sk);
extern int criusec_ps_take_grant(int fd_type, unsigned long img_id, const uint8_t *grant, size_t len);
extern bool criusec_ps_grant_used(void);
/* Page server: the dump now opened is encrypted, so its parent's pagemaps are not readable here. */
extern bool criusec_ps_parent_opaque(void);

/*
 * Restore: once it succeeded (ok) or failed, wipe every plaintext and key
 * it held; punch the pages --auto-dedup deferred only if ok.
 * criusec_punch(): dedup of len bytes of pages at off (page number * 4096)
 * of an encrypted page image, punched by criusec (a compressed region once
 * all its pages went), in a restore only once it succeeded: 1 done (or
 * deferred), 0 when fd is no such image (punch it as usual), -1 on error.
 */
extern void criusec_restore_finish(bool ok);
/*
 * Restore, once the log is set up and before kerndat: a thread unwraps the
 * checkpoint key meanwhile (criusec-prefetch.c); its result is used only
 * by the images directory's load, on the same cipher.img.
 */
extern void criusec_restore_prefetch(void);
extern int criusec_punch(int fd, unsigned long off, unsigned long len);

/*
 * Plugins' own image files (criusec-plugin.c): criu_image_open() and
 * criu_image_close() of criu-plugin.h route them through the stream layer
 * under the kind "plugin"; and under --encrypt, nothing may be in the
 * images directory that the manifest does not list.
 */
#define CRIUSEC_PLUGIN_KIND "plugin"

/* Dump, around the plugins' exit hooks: nothing new in the images directory after them. */
extern void criusec_plugins_exiting(int ret);
extern int criusec_dump_check_late(int ret);

#endif /* __CR_CRIUSEC_GLUE_H__ */
