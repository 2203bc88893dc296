/* fuzz_frame.c: libFuzzer target over what the manager can send: the frame
 * parser, then the request validators on whatever parsed. */
#include "protocol.h"

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct frame f;
    struct move_request req;
    struct move_selector sel;
    char why[256];
    /* The parser rewrites escapes in place: give it its own copy, as the
     * receive buffer is in the daemon. */
    char *buf = malloc(size ? size : 1);
    if (!buf)
        return 0;
    memcpy(buf, data, size);
    if (protocol_parse_frame(buf, size, &f, why, sizeof why) == FRAME_OK && f.data) {
        (void)protocol_parse_move_data(f.data, &req, why, sizeof why);
        (void)protocol_parse_selector(f.data, &sel, why, sizeof why);
    }
    frame_free(&f);
    free(buf);
    return 0;
}
