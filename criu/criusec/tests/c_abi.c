/* criusec.h compiled as C (as CRIU compiles it), and calls only C can make. */
#include <stddef.h>

#include "criusec.h"

const char *c_aead_name_raw(int v);
struct criusec_ctx *c_ctx_new_raw(int v);
size_t c_sizeof_header(void);

const char *c_aead_name_raw(int v)
{
	return criusec_aead_name((enum criusec_aead)v);
}

struct criusec_ctx *c_ctx_new_raw(int v)
{
	return criusec_ctx_new((enum criusec_aead)v);
}

size_t c_sizeof_header(void)
{
	struct criusec_header h = { 0 };
	return sizeof(h);
}
