/* cli_move.h: `hostagent move OLD NEW`: the engine without a manager. */
#ifndef HOSTAGENT_CLI_MOVE_H
#define HOSTAGENT_CLI_MOVE_H

/* argv holds the arguments after "move". Returns the exit status: 0 moved,
 * 1 failed or cancelled (code and error on stderr), 2 usage. */
int cli_move_main(int argc, char **argv);

#endif
