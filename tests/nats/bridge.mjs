// bridge.mjs: the tests' NATS client (the official nats.js), driven line by
// line over stdin/stdout by the Python tests and the reference manager.
// Usage: node bridge.mjs URL[,URL...] [--user U --pass P | --token T | --creds FILE] [--ca FILE]
// Each stdin line is one JSON command with an "id"; each answer is one JSON
// line {"id":..,...}; messages of subscriptions come as {"event":"msg",...}.
import { readFileSync } from "node:fs";
import { connect, StringCodec, createInbox, credsAuthenticator, headers } from "nats";

const sc = StringCodec();
const args = process.argv.slice(2);
const opts = { servers: args[0].split(","), reconnect: true, maxReconnectAttempts: -1,
               reconnectTimeWait: 200, name: "hostagent-tests" };
for (let i = 1; i < args.length; i += 2) {
  if (args[i] === "--user") opts.user = args[i + 1];
  else if (args[i] === "--pass") opts.pass = args[i + 1];
  else if (args[i] === "--token") opts.token = args[i + 1];
  else if (args[i] === "--creds") opts.authenticator = credsAuthenticator(readFileSync(args[i + 1]));
  else if (args[i] === "--ca") opts.tls = { caFile: args[i + 1] };
}
const out = (o) => process.stdout.write(JSON.stringify(o) + "\n");
let nc;
try {
  nc = await connect(opts);
} catch (e) {
  out({ event: "error", error: String(e) });
  process.exit(2);
}
out({ event: "ready", server: nc.getServer() });
const subs = new Map();

async function handle(cmd) {
  const id = cmd.id;
  switch (cmd.op) {
    case "request": {
      const t0 = performance.now();
      try {
        const m = await nc.request(cmd.subject, sc.encode(cmd.data ?? ""), { timeout: cmd.timeout ?? 5000 });
        return out({ id, ok: true, data: sc.decode(m.data), ms: performance.now() - t0 });
      } catch (e) {
        return out({ id, ok: false, error: String(e.code || e) });
      }
    }
    case "publish": {
      const o = {};
      if (cmd.reply) o.reply = cmd.reply;
      nc.publish(cmd.subject, sc.encode(cmd.data ?? ""), o);
      await nc.flush();
      return out({ id, ok: true });
    }
    case "gather": {
      // Scatter-gather: one request, every answer within wait ms.
      const inbox = createInbox();
      const replies = [];
      const t0 = performance.now();
      const sub = nc.subscribe(inbox);
      (async () => {
        for await (const m of sub) replies.push({ data: sc.decode(m.data), ms: performance.now() - t0 });
      })();
      await nc.flush();
      nc.publish(cmd.subject, sc.encode(cmd.data ?? ""), { reply: inbox });
      const want = cmd.expect ?? 0;
      while (performance.now() - t0 < (cmd.wait ?? 2000) && !(want && replies.length >= want))
        await new Promise((r) => setTimeout(r, 5));
      sub.unsubscribe();
      return out({ id, ok: true, replies, ms: performance.now() - t0 });
    }
    case "sub": {
      const sub = nc.subscribe(cmd.subject);
      subs.set(cmd.subject, sub);
      (async () => {
        for await (const m of sub)
          out({ event: "msg", sub: cmd.subject, subject: m.subject, data: sc.decode(m.data),
                at: Date.now(), hrt: performance.timeOrigin + performance.now() });
      })();
      await nc.flush();
      return out({ id, ok: true });
    }
    case "stream_add": {
      const jsm = await nc.jetstreamManager();
      try {
        // no_ack: the stream stores what it gets but sends no PubAck (an
        // acknowledgement lost on its way), until stream_update says otherwise.
        const si = await jsm.streams.add({ name: cmd.name, subjects: cmd.subjects,
                                           num_replicas: cmd.replicas ?? 1,
                                           no_ack: cmd.no_ack ?? false,
                                           duplicate_window: 3600 * 1e9 });
        return out({ id, ok: true, name: si.config.name });
      } catch (e) {
        return out({ id, ok: false, error: String(e) });
      }
    }
    case "stream_update": {
      const jsm = await nc.jetstreamManager();
      try {
        const si = await jsm.streams.update(cmd.name, { no_ack: cmd.no_ack ?? false });
        return out({ id, ok: true, no_ack: si.config.no_ack ?? false });
      } catch (e) {
        return out({ id, ok: false, error: String(e) });
      }
    }
    case "stream_msgs": {
      // Every message of the stream, in order: [{subject, data, msgId}].
      const jsm = await nc.jetstreamManager();
      try {
        const si = await jsm.streams.info(cmd.name);
        const msgs = [];
        for (let seq = si.state.first_seq; seq <= si.state.last_seq && si.state.messages > 0; seq++) {
          try {
            const m = await jsm.streams.getMessage(cmd.name, { seq });
            msgs.push({ subject: m.subject, data: sc.decode(m.data), msgId: m.header?.get("Nats-Msg-Id") ?? "" });
          } catch (e) { /* deleted */ }
        }
        return out({ id, ok: true, msgs });
      } catch (e) {
        return out({ id, ok: false, error: String(e) });
      }
    }
    case "server":
      return out({ id, ok: true, server: nc.getServer() });
    default:
      return out({ id, ok: false, error: "unknown op " + cmd.op });
  }
}

let buf = "";
process.stdin.setEncoding("utf8");
process.stdin.on("data", (chunk) => {
  buf += chunk;
  let nl;
  while ((nl = buf.indexOf("\n")) >= 0) {
    const line = buf.slice(0, nl);
    buf = buf.slice(nl + 1);
    if (line.trim()) handle(JSON.parse(line)).catch((e) => out({ id: JSON.parse(line).id, ok: false, error: String(e) }));
  }
});
process.stdin.on("end", async () => {
  await nc.drain();
  process.exit(0);
});
