// SPDX-License-Identifier: GPL-2.0-only
/*
 * criusec: host policy, decided here and nowhere else.  Which signing
 * identity a dump uses, which signers a restore trusts, which private keys
 * it tries, what this host refuses (criusec_policy_refuses()), and every
 * refusal's message, naming the config line that changes it.  The engine
 * (policy.cpp) applies the trust rules to a header; this file says what
 * the host's configuration is.  criu check prints it.
 */
#include <errno.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "criusec.h"
#include "criusec-glue.h"
#include "criusec-layer.h"
#include "cr_options.h"
#include "log.h"

#undef LOG_PREFIX
#define LOG_PREFIX "criusec: "

/* The marker exists: anything but "no such file" counts, a dangling link too. */
static bool marker_present(void)
{
	struct stat st;

	return lstat(CRIUSEC_REQUIRED_MARKER, &st) == 0 || errno != ENOENT;
}

/* criu works in its work directory (-W, else -D), and so do relative paths. */
static bool relative_path(const char *p)
{
	return p && p[0] != '/' && !criusec_key_is_url(p);
}

const char *criusec_relative_hint(const char *a, const char *b)
{
	if (relative_path(a) || relative_path(b))
		return " (a relative path is taken from the work directory: -W, else -D)";
	return "";
}

/*
 * While criu holds key material or plaintext: no core dump (criu's cwd may
 * be the images directory) and no ptrace by anyone but root.  For the rest
 * of the process: a core written after restore would still hold what the
 * images described.
 */
void criusec_holding_keys(void)
{
	if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0))
		pr_perror("Can't make criu non-dumpable");
}

/*
 * The signing identity of a dump: --sign-key/--sign-cert (config lines
 * sign-key, sign-cert), else CRIU's host pair when both files are
 * readable.  0 with *s NULL: no identity (the dump is unsigned).
 */
int criusec_load_signer(struct criusec_signer **s, const char **key_out, const char **cert_out)
{
	const char *key = opts.sign_key, *cert = opts.sign_cert;

	*s = NULL;
	if (!key != !cert) {
		pr_err("Signing needs both a key and its certificate: give --sign-key and --sign-cert "
		       "(config lines 'sign-key PATH' and 'sign-cert PATH')\n");
		return -1;
	}
	if (!key) {
		if (access(CRIUSEC_DEFAULT_KEY, R_OK) || access(CRIUSEC_DEFAULT_CERT, R_OK))
			return 0;
		key = CRIUSEC_DEFAULT_KEY;
		cert = CRIUSEC_DEFAULT_CERT;
	}
	*s = criusec_signer_load(key, cert);
	if (!*s) {
		/* The engine's reason names the file; say which setting gave it. */
		if (opts.sign_key)
			pr_err("Signing identity (--sign-key/--sign-cert, or the config lines 'sign-key PATH' and "
			       "'sign-cert PATH' in %s): %s%s\n",
			       CRIUSEC_DEFAULT_CONF, criusec_last_error(), criusec_relative_hint(key, cert));
		else
			pr_err("CRIU's default signing identity can't be used: %s (replace it, or set the config "
			       "lines 'sign-key PATH' and 'sign-cert PATH' in %s, or --sign-key/--sign-cert)\n",
			       criusec_last_error(), CRIUSEC_DEFAULT_CONF);
		return -1;
	}
	if (key_out)
		*key_out = key;
	if (cert_out)
		*cert_out = cert;
	return 0;
}

/*
 * The restore policy (Documentation/criusec-format.md, 10.8), made once:
 * trusted signers from --trust (config line 'trust PATH'), else the default
 * trust file if it exists; protection required by any trust or the marker.
 */
static struct criusec_trust *trust;
static const char *trust_origin; /* how trust was configured, for messages */

static int get_policy(struct criusec_policy *pol)
{
	static int loaded; /* 1 done, -1 failed */
	int i;

	if (!loaded) {
		loaded = -1;
		trust = criusec_trust_new();
		if (!trust)
			return -1;
		for (i = 0; i < opts.nr_trust; i++) {
			if (criusec_trust_add_file(trust, opts.trust[i])) {
				pr_err("Trusted signers %s (--trust, or a 'trust PATH' config line): %s\n",
				       opts.trust[i], criusec_last_error());
				return -1;
			}
			trust_origin = "--trust or a 'trust' config line";
		}
		if (!opts.nr_trust && access(CRIUSEC_DEFAULT_TRUST, F_OK) == 0) {
			if (criusec_trust_add_file(trust, CRIUSEC_DEFAULT_TRUST)) {
				pr_err("Trusted signers %s: %s\n", CRIUSEC_DEFAULT_TRUST, criusec_last_error());
				return -1;
			}
			trust_origin = CRIUSEC_DEFAULT_TRUST;
		}
		loaded = 1;
	}
	if (loaded < 0)
		return -1;
	pol->trust = trust;
	pol->required = marker_present();
	pol->max_age = opts.max_age;
	return 0;
}

static bool policy_protects(const struct criusec_policy *pol)
{
	return pol->required || criusec_trust_count(pol->trust) > 0;
}

/* Why this host refuses what is not encrypted and signed, and where that is set. */
static const char *policy_why(const struct criusec_policy *pol)
{
	if (criusec_trust_count(pol->trust))
		return trust_origin;
	return CRIUSEC_REQUIRED_MARKER " exists";
}

/*
 * A policy refusal and the config line (or flag) that fixes it, in one
 * line: RPC callers and syslog get the first error line only.
 */
static void policy_refusal(const char *why, const struct criusec_policy *pol, const struct criusec_verdict *v)
{
	if (v->trusted || (v->is_signed && !policy_protects(pol)))
		/* The signer is fine: the checkpoint's age is not. */
		pr_err("%s (the limit is --max-age, or a 'max-age SECONDS' line in %s)\n", why, CRIUSEC_DEFAULT_CONF);
	else if (!policy_protects(pol))
		pr_err("%s: dump with a signing key ('sign-key'/'sign-cert' in the dumping host's %s, or "
		       "--sign-key/--sign-cert), or restore without --max-age ('max-age' line)\n",
		       why, CRIUSEC_DEFAULT_CONF);
	else if (!criusec_trust_count(pol->trust))
		pr_err("%s: %s exists, but no trusted signer is configured: pass --trust PEM, add a line "
		       "'trust PEM' to %s, or install %s\n",
		       why, CRIUSEC_REQUIRED_MARKER, CRIUSEC_DEFAULT_CONF, CRIUSEC_DEFAULT_TRUST);
	else if (!v->is_signed)
		pr_err("%s (%s): dump with a signing key ('sign-key'/'sign-cert' in the dumping host's %s, or "
		       "--sign-key/--sign-cert)\n",
		       why, policy_why(pol), CRIUSEC_DEFAULT_CONF);
	else
		pr_err("%s (%s): add the signer's CA or certificate to a trust file (--trust PEM, or a line "
		       "'trust PEM' in %s)\n",
		       why, policy_why(pol), CRIUSEC_DEFAULT_CONF);
}

/*
 * The one predicate of host policy: true when this host refuses act (said
 * why, and which config line or flag changes it), false when criu goes on
 * (warned where that leaves something unprotected).  The marker
 * (encryption-required) makes every act refused; trusted signers make a
 * restore refuse plaintext checkpoints too.
 */
bool criusec_policy_refuses(enum criusec_act act)
{
	struct criusec_policy pol;
	bool required = marker_present();

	switch (act) {
	case CRIUSEC_DUMP_PLAIN:
		if (required)
			pr_err("Encryption is required on this host (%s exists), but --encrypt was not given "
			       "(add a line 'encrypt' to %s, or pass --encrypt)\n",
			       CRIUSEC_REQUIRED_MARKER, CRIUSEC_DEFAULT_CONF);
		return required;
	case CRIUSEC_DUMP_LAZY_PLAIN:
		if (required)
			pr_err("Encryption is required on this host (%s exists): --lazy-pages needs --tls, or the lazy "
			       "pages leave it unencrypted\n",
			       CRIUSEC_REQUIRED_MARKER);
		else
			pr_warn("--lazy-pages without --tls: the lazy pages leave this host unencrypted\n");
		return required;
	case CRIUSEC_DUMP_UNSIGNED:
		if (required)
			pr_err("This host requires protected checkpoints (%s exists), but has no signing key: set "
			       "'sign-key PATH' and 'sign-cert PATH' in %s (or --sign-key/--sign-cert), or install "
			       "%s and %s\n",
			       CRIUSEC_REQUIRED_MARKER, CRIUSEC_DEFAULT_CONF, CRIUSEC_DEFAULT_KEY, CRIUSEC_DEFAULT_CERT);
		else
			pr_warn("The checkpoint is not signed: no --sign-key/--sign-cert, and no readable %s and %s; "
				"hosts that trust signers will refuse it\n",
				CRIUSEC_DEFAULT_KEY, CRIUSEC_DEFAULT_CERT);
		return required;
	case CRIUSEC_SERVE_PLAIN:
		/* What leaves here is decrypted: only over TLS on such a host. */
		if (required)
			pr_err("Encryption is required on this host (%s exists): serving decrypted pages needs --tls\n",
			       CRIUSEC_REQUIRED_MARKER);
		return required;
	case CRIUSEC_RECEIVE_PLAIN:
		/* No grant: the dump is not encrypted, and its pages would land here in clear. */
		if (required)
			pr_err("Encryption is required on this host (%s exists): the page server refuses the images of "
			       "a dump without --encrypt\n",
			       CRIUSEC_REQUIRED_MARKER);
		return required;
	case CRIUSEC_RESTORE_PLAIN:
		if (get_policy(&pol))
			return true;
		if (!policy_protects(&pol))
			return false;
		pr_err("The checkpoint is not encrypted (no cipher.img), and this host restores only encrypted "
		       "checkpoints signed by a trusted signer (%s)\n",
		       policy_why(&pol));
		return true;
	}
	return true;
}

int check_criusec(void)
{
	struct criusec_signer *s;
	struct criusec_policy pol;
	const char *key = NULL, *cert = NULL;
	size_t i, n;

	if (criusec_self_test()) {
		pr_err("engine %s: self-test failed: %s\n", criusec_version(), criusec_last_error());
		return -1;
	}
	pr_msg("criusec engine %s: self-test passed, AEAD %s, pages on %zu thread(s)\n", criusec_version(),
	       criusec_aead_name(criusec_default_aead()), criusec_page_workers());

	if (criusec_load_signer(&s, &key, &cert))
		return -1;
	if (s)
		pr_msg("criusec: a dump would be signed by %s (key %s, certificate %s)\n",
		       criusec_signer_subject(s), criusec_key_display(key), cert);
	else
		pr_msg("criusec: a dump would be unsigned (no --sign-key/--sign-cert, and no readable %s and %s)\n",
		       CRIUSEC_DEFAULT_KEY, CRIUSEC_DEFAULT_CERT);
	criusec_signer_free(s);

	if (get_policy(&pol))
		return -1;
	n = criusec_trust_count(pol.trust);
	if (n) {
		pr_msg("criusec: a restore trusts %zu certificate(s) from %s:\n", n, trust_origin);
		for (i = 0; i < n; i++)
			pr_msg("criusec:   %s\n", criusec_trust_subject(pol.trust, i));
	} else {
		pr_msg("criusec: a restore trusts no signer (no --trust, no %s)\n", CRIUSEC_DEFAULT_TRUST);
	}
	if (policy_protects(&pol))
		pr_msg("criusec: a restore refuses checkpoints that are not encrypted and signed by a trusted "
		       "signer (%s)%s\n",
		       policy_why(&pol), pol.required && !n ? ": no signer is trusted, so every restore fails" : "");
	else
		pr_msg("criusec: a restore accepts plaintext and unsigned checkpoints (configure trusted signers "
		       "or create %s to refuse them)\n",
		       CRIUSEC_REQUIRED_MARKER);
	if (pol.max_age)
		pr_msg("criusec: a restore refuses checkpoints older than %llu s\n", (unsigned long long)pol.max_age);
	return 0;
}

/* The policy and the signature, before any key is used. */
int criusec_check_header(const struct criusec_header *h)
{
	struct criusec_verdict v;
	struct criusec_policy pol;
	int ret;

	if (get_policy(&pol))
		return -1;
	ret = criusec_header_check(h, &pol, &v);
	if (ret == -EKEYREJECTED) {
		char why[512]; /* the engine's next call clears its error */

		snprintf(why, sizeof(why), "%s", criusec_last_error());
		policy_refusal(why, &pol, &v);
		return -1;
	}
	if (ret) {
		pr_err("%s\n", criusec_last_error());
		return -1;
	}
	if (v.is_signed)
		pr_info("cipher.img: signed by %s (%s)\n", v.signer, v.trusted ? v.how : "not checked against trust");
	else
		pr_info("cipher.img: unsigned (format %u)\n", h->version);
	return 0;
}

/*
 * The restore's private keys: every --tls-key (and 'tls-key' config line),
 * in order, or CRIU's default.  Several keys let a node restore what was
 * made for its old key while it rotates.  Each is a PEM file or a PKCS#11
 * URL (the key stays in its token).  A key that is not a recipient gives
 * way to the next; any other failure (an unreadable file, a wrong PIN, a
 * missing token) stops the restore there, naming that key.
 */
char **criusec_restore_keys(int *n)
{
	static char *dflt[] = { CRIUSEC_DEFAULT_KEY };

	*n = opts.nr_tls_keys ?: 1;
	return opts.nr_tls_keys ? opts.tls_keys : dflt;
}

struct criusec_ctx *criusec_restore_import(const struct criusec_header *h)
{
	int i, n;
	char **keys = criusec_restore_keys(&n);
	struct criusec_ctx *ctx;

	for (i = 0; i < n; i++) {
		if (!criusec_key_is_url(keys[i]) && access(keys[i], R_OK)) {
			pr_err("The checkpoint is encrypted; pass the private key with --tls-key or a 'tls-key PATH' "
			       "line in %s (%s: %s)\n",
			       CRIUSEC_DEFAULT_CONF, keys[i], strerror(errno));
			return NULL;
		}
		ctx = criusec_ctx_import(h, keys[i]);
		if (ctx) {
			pr_info("cipher.img: unlocked with %s\n", criusec_key_display(keys[i]));
			return ctx;
		}
		if (criusec_last_errno() != -ENOKEY || i == n - 1)
			break;
		pr_info("%s is not a recipient of the checkpoint; trying the next key\n",
			criusec_key_display(keys[i]));
	}
	if (n > 1 && criusec_last_errno() == -ENOKEY)
		pr_err("cipher.img: none of the %d keys (--tls-key, or 'tls-key' lines in %s) is a recipient of "
		       "the checkpoint\n",
		       n, CRIUSEC_DEFAULT_CONF);
	else
		pr_err("cipher.img: %s (key %s, from --tls-key or a 'tls-key' line in %s)\n", criusec_last_error(),
		       criusec_key_display(keys[i]), CRIUSEC_DEFAULT_CONF);
	return NULL;
}
