// SPDX-License-Identifier: GPL-2.0-only
/*
 * criusec: cipher.img, the checkpoint's header, between CRIU's protobuf
 * and the engine's struct criusec_header.  Only the shape is checked here
 * (field lengths); the engine checks the header's structure, its MAC and
 * its signature.
 */
#include <string.h>

#include "criusec.h"
#include "criusec-layer.h"
#include "image.h"
#include "log.h"
#include "protobuf.h"
#include "util.h"
#include "common/xmalloc.h"

#undef LOG_PREFIX
#define LOG_PREFIX "criusec: "

/* dir's cipher.img, if any: 1 read, 0 absent, -1 error. */
int criusec_read_cipher_entry(int dfd, CipherEntry **ce)
{
	struct cr_img *img;
	int ret;

	img = open_image_at(dfd, CR_FD_CIPHER, O_RSTR);
	if (!img)
		return -1;
	if (empty_image(img)) {
		close_image(img);
		return 0;
	}
	ret = pb_read_one(img, ce, PB_CIPHER);
	close_image(img);
	return ret < 0 ? -1 : 1;
}

int criusec_write_cipher_img(struct criusec_ctx *ctx)
{
	CipherEntry ce = CIPHER_ENTRY__INIT;
	CipherRecipientEntry *re = NULL, **rp = NULL;
	ProtobufCBinaryData *certs = NULL;
	struct criusec_header h;
	struct cr_img *img;
	size_t i;
	int ret = -1;

	if (criusec_ctx_export(ctx, &h)) {
		pr_err("cipher.img: %s\n", criusec_last_error());
		return -1;
	}
	re = xmalloc(h.n_recipients * sizeof(*re));
	rp = xmalloc(h.n_recipients * sizeof(*rp));
	certs = xmalloc((h.n_signer_certs ?: 1) * sizeof(*certs));
	if (!re || !rp || !certs)
		goto out;
	for (i = 0; i < h.n_recipients; i++) {
		cipher_recipient_entry__init(&re[i]);
		re[i].fingerprint.data = (uint8_t *)h.recipients[i].fingerprint;
		re[i].fingerprint.len = CRIUSEC_FPR_LEN;
		re[i].wrap_alg = h.recipients[i].wrap_alg;
		re[i].wrapped_key.data = (uint8_t *)h.recipients[i].wrapped;
		re[i].wrapped_key.len = h.recipients[i].wrapped_len;
		rp[i] = &re[i];
	}
	for (i = 0; i < h.n_signer_certs; i++) {
		certs[i].data = (uint8_t *)h.signer_certs[i].data;
		certs[i].len = h.signer_certs[i].len;
	}
	ce.version = h.version;
	ce.ckpt_id.data = h.ckpt_id;
	ce.ckpt_id.len = CRIUSEC_ID_LEN;
	if (h.has_parent) {
		ce.has_parent_id = true;
		ce.parent_id.data = h.parent_id;
		ce.parent_id.len = CRIUSEC_ID_LEN;
		ce.has_parent_binding = true;
		ce.parent_binding.data = h.parent_binding;
		ce.parent_binding.len = CRIUSEC_MAC_LEN;
	}
	ce.aead = h.aead;
	ce.chunk_size = h.chunk_size;
	ce.n_recipients = h.n_recipients;
	ce.recipients = rp;
	ce.mac.data = h.mac;
	ce.mac.len = CRIUSEC_MAC_LEN;
	ce.has_created = true;
	ce.created = h.created;
	ce.has_manifest_digest = true;
	ce.manifest_digest.data = h.manifest_digest;
	ce.manifest_digest.len = CRIUSEC_DIGEST_LEN;
	ce.has_sig_alg = true;
	ce.sig_alg = h.sig_alg;
	ce.has_compress = true;
	ce.compress = h.compress;
	ce.n_signer_certs = h.n_signer_certs;
	ce.signer_certs = certs;
	if (h.signature.len) {
		ce.has_signature = true;
		ce.signature.data = (uint8_t *)h.signature.data;
		ce.signature.len = h.signature.len;
	}

	img = open_image(CR_FD_CIPHER, O_DUMP);
	if (img) {
		ret = pb_write_one(img, &ce, PB_CIPHER);
		close_image(img);
	}
out:
	xfree(re);
	xfree(rp);
	xfree(certs);
	return ret;
}

void criusec_pb_header_free(struct pb_header *ph)
{
	xfree(ph->rs);
	xfree(ph->certs);
}

#define PB_LEN_OK(has, f, n) (!(has) || (f).len == (n))

int criusec_header_from_pb(CipherEntry *ce, struct pb_header *ph)
{
	struct criusec_header *h = &ph->h;
	size_t i;

	memset(ph, 0, sizeof(*ph));
	if (ce->ckpt_id.len != CRIUSEC_ID_LEN || ce->mac.len != CRIUSEC_MAC_LEN ||
	    !PB_LEN_OK(ce->has_parent_id, ce->parent_id, CRIUSEC_ID_LEN) ||
	    !PB_LEN_OK(ce->has_parent_binding, ce->parent_binding, CRIUSEC_MAC_LEN) ||
	    !PB_LEN_OK(ce->has_manifest_digest, ce->manifest_digest, CRIUSEC_DIGEST_LEN) ||
	    ce->n_signer_certs > CRIUSEC_MAX_SIGNER_CERTS)
		return -1;
	/* A format-2 header has both or neither; format 1 has no binding. */
	if (ce->version != 1 && ce->has_parent_id != ce->has_parent_binding)
		return -1;
	ph->rs = xzalloc(sizeof(*ph->rs) * (ce->n_recipients ?: 1));
	ph->certs = xzalloc(sizeof(*ph->certs) * (ce->n_signer_certs ?: 1));
	if (!ph->rs || !ph->certs)
		return -1;
	for (i = 0; i < ce->n_recipients; i++) {
		CipherRecipientEntry *re = ce->recipients[i];

		if (re->fingerprint.len != CRIUSEC_FPR_LEN)
			return -1;
		memcpy(ph->rs[i].fingerprint, re->fingerprint.data, CRIUSEC_FPR_LEN);
		ph->rs[i].wrap_alg = re->wrap_alg;
		ph->rs[i].wrapped = re->wrapped_key.data;
		ph->rs[i].wrapped_len = re->wrapped_key.len;
	}
	for (i = 0; i < ce->n_signer_certs; i++) {
		ph->certs[i].data = ce->signer_certs[i].data;
		ph->certs[i].len = ce->signer_certs[i].len;
	}
	h->version = ce->version;
	memcpy(h->ckpt_id, ce->ckpt_id.data, CRIUSEC_ID_LEN);
	h->has_parent = ce->has_parent_id;
	if (ce->has_parent_id)
		memcpy(h->parent_id, ce->parent_id.data, CRIUSEC_ID_LEN);
	if (ce->has_parent_binding)
		memcpy(h->parent_binding, ce->parent_binding.data, CRIUSEC_MAC_LEN);
	h->aead = ce->aead;
	h->chunk_size = ce->chunk_size;
	h->n_recipients = ce->n_recipients;
	h->recipients = ph->rs;
	memcpy(h->mac, ce->mac.data, CRIUSEC_MAC_LEN);
	h->created = ce->has_created ? ce->created : 0;
	if (ce->has_manifest_digest)
		memcpy(h->manifest_digest, ce->manifest_digest.data, CRIUSEC_DIGEST_LEN);
	h->sig_alg = ce->has_sig_alg ? ce->sig_alg : 0;
	h->compress = ce->has_compress ? ce->compress : 0;
	h->n_signer_certs = ce->n_signer_certs;
	h->signer_certs = ph->certs;
	if (ce->has_signature) {
		h->signature.data = ce->signature.data;
		h->signature.len = ce->signature.len;
	}
	return 0;
}
