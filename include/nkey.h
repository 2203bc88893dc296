/* nkey.h: the public key of a NATS nkey seed (nats.c wants both; an
 * operator's seed file holds only the seed). */
#ifndef HOSTAGENT_NKEY_H
#define HOSTAGENT_NKEY_H

#include <stddef.h>

/* Reads the first seed ("S...") in file and writes its public key (56
 * characters) to pub. 0, or -EINVAL with a sentence in why. */
int nkey_public_from_seed_file(const char *file, char *pub, size_t pubsz, char *why, size_t whysz);

/* The same from the seed's text. */
int nkey_public_from_seed(const char *seed, char *pub, size_t pubsz, char *why, size_t whysz);

#endif
