// SPDX-License-Identifier: GPL-2.0-only
/*
 * criusec: the thin layer between CRIU and the encryption engine
 * (criu/criusec/, interface in criusec.h).
 */
#include "criusec.h"
#include "criusec-glue.h"
#include "log.h"

int check_criusec(void)
{
	if (criusec_self_test()) {
		pr_err("criusec engine %s: self-test failed: %s\n", criusec_version(), criusec_last_error());
		return -1;
	}
	pr_msg("criusec engine %s: self-test passed, AEAD %s\n", criusec_version(),
	       criusec_aead_name(criusec_default_aead()));
	return 0;
}
