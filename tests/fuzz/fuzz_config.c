/* fuzz_config.c: libFuzzer target over the config file parser. */
#include "config.h"

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct config cfg;
    struct config_errors errs;
    FILE *f = fmemopen((void *)data, size, "r");
    if (!f)
        return 0;
    if (config_load_stream(f, "fuzz.conf", &cfg, &errs) == 0)
        config_free(&cfg);
    config_errors_free(&errs);
    fclose(f);
    return 0;
}
