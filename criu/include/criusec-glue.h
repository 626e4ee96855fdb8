#ifndef __CR_CRIUSEC_GLUE_H__
#define __CR_CRIUSEC_GLUE_H__

/* criu check: the engine's self-test, version and the AEAD it would use. */
extern int check_criusec(void);

/*
 * Dump and pre-dump: make the checkpoint key and write cipher.img before any
 * other image (a no-op without --encrypt); at the end, write the manifest
 * and fail if any image could not be sealed.
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

#endif /* __CR_CRIUSEC_GLUE_H__ */
