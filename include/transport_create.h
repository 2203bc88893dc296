/* transport_create.h: makes the transport the config names (the WebSocket
 * or the NATS client), above both clients and their interface. */
#ifndef HOSTAGENT_TRANSPORT_CREATE_H
#define HOSTAGENT_TRANSPORT_CREATE_H

#include "config.h"
#include "transport.h"

#include <uv.h>

/* Makes the transport cfg->transport names, on loop. 0 or negative errno;
 * *out is set even on failure (its handles may be open): the owner closes
 * and destroys it in every case. */
int transport_create(struct transport **out, uv_loop_t *loop, const struct config *cfg,
                     const struct transport_ops *ops, void *owner);

#endif
