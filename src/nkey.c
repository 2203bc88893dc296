/* nkey.c: an nkey seed's public key: base32 (RFC 4648, no padding) of a
 * prefix, the 32-byte Ed25519 seed and a CRC-16 (XMODEM), as the nkeys
 * library defines them; the Ed25519 public key comes from OpenSSL. */
#include "nkey.h"
#include "util.h"

#include <errno.h>
#include <openssl/evp.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#define NKEY_PREFIX_SEED (18u << 3) /* 'S' */
#define NKEY_RAW_SEED_LEN 36u       /* 2 prefix bytes, 32 seed bytes, 2 CRC bytes */
#define NKEY_RAW_PUB_LEN 35u        /* 1 prefix byte, 32 key bytes, 2 CRC bytes */

static const char b32[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

static uint16_t crc16(const unsigned char *p, size_t n)
{
    uint16_t crc = 0;
    while (n--) {
        crc ^= (uint16_t)(*p++ << 8);
        for (int i = 0; i < 8; i++)
            crc = (uint16_t)(crc & 0x8000 ? (crc << 1) ^ 0x1021 : crc << 1);
    }
    return crc;
}

static int b32_decode(const char *s, unsigned char *out, size_t outsz, size_t *n)
{
    uint32_t acc = 0;
    unsigned bits = 0;
    *n = 0;
    for (; *s; s++) {
        const char *p = strchr(b32, *s);
        if (!p || *s == '\0')
            return -EINVAL;
        acc = (acc << 5) | (uint32_t)(p - b32);
        bits += 5;
        if (bits >= 8) {
            bits -= 8;
            if (*n == outsz)
                return -EINVAL;
            out[(*n)++] = (unsigned char)(acc >> bits);
        }
    }
    return 0;
}

static void b32_encode(const unsigned char *in, size_t n, char *out)
{
    uint32_t acc = 0;
    unsigned bits = 0;
    for (size_t i = 0; i < n; i++) {
        acc = (acc << 8) | in[i];
        bits += 8;
        while (bits >= 5) {
            bits -= 5;
            *out++ = b32[(acc >> bits) & 31];
        }
    }
    if (bits > 0)
        *out++ = b32[(acc << (5 - bits)) & 31];
    *out = '\0';
}

int nkey_public_from_seed(const char *seed, char *pub, size_t pubsz, char *why, size_t whysz)
{
    unsigned char raw[64], key[NKEY_RAW_PUB_LEN];
    size_t n = 0, klen = 32;
    uint16_t crc;
    EVP_PKEY *pk;
    int rc = -EINVAL;

    if (b32_decode(seed, raw, sizeof raw, &n) != 0 || n != NKEY_RAW_SEED_LEN) {
        util_fmt(why, whysz, "the seed is not a base32 nkey seed");
        goto out;
    }
    crc = (uint16_t)(raw[34] | raw[35] << 8);
    if (crc16(raw, 34) != crc) {
        util_fmt(why, whysz, "the seed's checksum is wrong");
        goto out;
    }
    if ((raw[0] & 0xf8) != NKEY_PREFIX_SEED) {
        util_fmt(why, whysz, "the file holds no seed (it must start with S)");
        goto out;
    }
    key[0] = (unsigned char)(((raw[0] & 7) << 5) | ((raw[1] & 0xf8) >> 3));
    pk = EVP_PKEY_new_raw_private_key(EVP_PKEY_ED25519, NULL, raw + 2, 32);
    if (!pk || EVP_PKEY_get_raw_public_key(pk, key + 1, &klen) != 1 || klen != 32) {
        EVP_PKEY_free(pk);
        util_fmt(why, whysz, "the seed is not an Ed25519 key");
        goto out;
    }
    EVP_PKEY_free(pk);
    crc = crc16(key, 33);
    key[33] = (unsigned char)(crc & 0xff);
    key[34] = (unsigned char)(crc >> 8);
    if (pubsz < 57) {
        util_fmt(why, whysz, "no room for the public key");
        goto out;
    }
    b32_encode(key, sizeof key, pub);
    rc = 0;
out:
    memset(raw, 0, sizeof raw);
    return rc;
}

int nkey_public_from_seed_file(const char *file, char *pub, size_t pubsz, char *why, size_t whysz)
{
    char line[256];
    int rc = -EINVAL;
    FILE *f = fopen(file, "re");
    if (!f) {
        util_fmt(why, whysz, "cannot open: %s", strerror(errno));
        return -EINVAL;
    }
    util_fmt(why, whysz, "no line starting with S (an nkey seed) in the file");
    while (fgets(line, sizeof line, f)) {
        size_t n = strcspn(line, " \t\r\n");
        line[n] = '\0';
        if (line[0] == 'S') {
            rc = nkey_public_from_seed(line, pub, pubsz, why, whysz);
            break;
        }
    }
    memset(line, 0, sizeof line);
    fclose(f);
    return rc;
}
