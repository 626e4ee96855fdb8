// SPDX-License-Identifier: GPL-2.0-only
/*
 * A libcriu client, as crun is one: dump a task with encryption turned on
 * through the library's setters, or restore it with a private key.
 *
 *   libcriu_client dump    IMGDIR CRIU CERT PID [SIGN_KEY SIGN_CERT]
 *   libcriu_client restore IMGDIR CRIU KEY [TRUST [MAX_AGE]]
 *
 * With COMPRESS=ALG in the environment, dump also compresses
 * (criu_set_compress, criu_set_compress_alg).  Prints "dump 0" or
 * "restore PID" (criu_restore's result) and exits 0 on success; anything
 * else exits 1 with the library's return value.
 */
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "criu.h"

int main(int argc, char **argv)
{
	bool dump;
	int dfd, ret;

	if (argc < 5 || (strcmp(argv[1], "dump") && strcmp(argv[1], "restore")) ||
	    (!strcmp(argv[1], "dump") && argc != 6 && argc != 8) || (!strcmp(argv[1], "restore") && argc > 7)) {
		fprintf(stderr,
			"usage: %s dump IMGDIR CRIU CERT PID [SIGN_KEY SIGN_CERT] | "
			"restore IMGDIR CRIU KEY[,KEY...] [TRUST [MAX_AGE]]\n",
			argv[0]);
		return 2;
	}
	dump = !strcmp(argv[1], "dump");
	dfd = open(argv[2], O_DIRECTORY);
	if (dfd < 0) {
		perror(argv[2]);
		return 2;
	}
	if (criu_init_opts() || criu_set_service_binary(argv[3])) {
		fprintf(stderr, "criu_init_opts/criu_set_service_binary failed\n");
		return 1;
	}
	criu_set_images_dir_fd(dfd);
	criu_set_log_level(4);
	if (criu_set_log_file(dump ? "dump.log" : "restore.log")) {
		fprintf(stderr, "criu_set_log_file failed\n");
		return 1;
	}
	if (dump) {
		criu_set_pid(atoi(argv[5]));
		criu_set_encrypt(true);
		if (criu_add_encrypt_cert(argv[4])) {
			fprintf(stderr, "criu_add_encrypt_cert failed\n");
			return 1;
		}
		if (getenv("COMPRESS")) {
			criu_set_compress(true);
			if (criu_set_compress_alg(getenv("COMPRESS"))) {
				fprintf(stderr, "criu_set_compress_alg failed\n");
				return 1;
			}
		}
		if (argc == 8 && (criu_set_sign_key(argv[6]) || criu_set_sign_cert(argv[7]))) {
			fprintf(stderr, "criu_set_sign_key/criu_set_sign_cert failed\n");
			return 1;
		}
		ret = criu_dump();
		printf("dump %d\n", ret);
		return ret == 0 ? 0 : 1;
	}
	/* KEY may be KEY1,KEY2,...: the first set, the others added (rotation). */
	for (char *k = strtok(argv[4], ","), *first = k; k; k = strtok(NULL, ","))
		if (k == first ? criu_set_tls_key(k) : criu_add_tls_key(k)) {
			fprintf(stderr, "criu_set_tls_key/criu_add_tls_key failed\n");
			return 1;
		}
	if (argc >= 6 && criu_add_trust(argv[5])) {
		fprintf(stderr, "criu_add_trust failed\n");
		return 1;
	}
	if (argc == 7)
		criu_set_max_age(strtoull(argv[6], NULL, 10));
	ret = criu_restore();
	printf("restore %d\n", ret);
	return ret > 0 ? 0 : 1;
}
