#ifndef __CR_CRIUSEC_GLUE_H__
#define __CR_CRIUSEC_GLUE_H__

/* criu check: the engine's self-test, version and the AEAD it would use. */
extern int check_criusec(void);

#endif /* __CR_CRIUSEC_GLUE_H__ */
