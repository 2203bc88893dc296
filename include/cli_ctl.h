/* cli_ctl.h: `hostagent status` and `hostagent cancel`: the host's own view
 * of its moves, over the running daemon's control socket, or from state_dir
 * when no daemon runs. */
#ifndef HOSTAGENT_CLI_CTL_H
#define HOSTAGENT_CLI_CTL_H

/* argv[0] is "status" or "cancel", the rest its arguments. Returns the exit
 * status: 0 done, 1 failed (why on stderr), 2 usage. */
int cli_ctl_main(int argc, char **argv);

#endif
