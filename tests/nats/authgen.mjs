// authgen.mjs: keys and JWTs for the NATS authentication tests, made with the
// NATS project's own libraries (@nats-io/jwt and its nkeys), never by hand.
// Usage: node authgen.mjs DIR — writes into DIR:
//   user.nk, other.nk       user nkey seeds (plain config mode: the server
//                           lists user.nk's public key; other.nk is unknown)
//   operator.jwt            an operator, for operator (JWT) mode
//   agent.creds, bridge.creds  users of account A, signed by it
//   stranger.creds          a user signed by an account the server does not know
// and prints one JSON line: {"userPub": ..., "accountPub": ..., "accountJwt": ...}.
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { createAccount, createOperator, createUser, encodeAccount, encodeOperator, encodeUser,
         fmtCreds } from "@nats-io/jwt";

const dir = process.argv[2];
const dec = new TextDecoder();
const user = createUser(), other = createUser();
writeFileSync(join(dir, "user.nk"), dec.decode(user.getSeed()) + "\n", { mode: 0o600 });
writeFileSync(join(dir, "other.nk"), dec.decode(other.getSeed()) + "\n", { mode: 0o600 });

const op = createOperator(), acc = createAccount(), stranger = createAccount();
writeFileSync(join(dir, "operator.jwt"), await encodeOperator("O", op));
// No limits: an account's are zero unless given.
const accountJwt = await encodeAccount("A", acc, {
  limits: { conn: -1, subs: -1, data: -1, payload: -1, imports: -1, exports: -1, wildcards: true, leaf: -1 },
}, { signer: op });
for (const [name, issuer] of [["agent", acc], ["bridge", acc], ["stranger", stranger]]) {
  const u = createUser();
  const jwt = await encodeUser(name, u, issuer);
  writeFileSync(join(dir, name + ".creds"), fmtCreds(jwt, u), { mode: 0o600 });
}
process.stdout.write(JSON.stringify({ userPub: user.getPublicKey(), accountPub: acc.getPublicKey(),
                                      accountJwt }) + "\n");
