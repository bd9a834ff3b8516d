// The official nats.js clients against a Rory worker: $SRV PING/INFO/STATS through the services
// client (@nats-io/services) and one JSON command through plain request-reply.
// Usage: node nats_js_client.mjs SERVER_URL SERVICE_NAME COMMAND_SUBJECT COMMAND_JSON
// Prints one JSON object: {ping, info, stats, reply, reply_headers}. tests/interop/test_nats_js.py runs it.
import { connect, headers } from "@nats-io/transport-node";
import { Svcm } from "@nats-io/services";

const [server, name, subject, command] = process.argv.slice(2);
const nc = await connect({ servers: server, name: "rory-interop-nats-js" });
const client = new Svcm(nc).client({ maxWait: 1500 });

const collect = async (iterable) => {
  const out = [];
  for await (const item of await iterable) out.push(item);
  return out;
};

const ping = await collect(client.ping(name));
const info = await collect(client.info(name));
const stats = await collect(client.stats(name));

const h = headers();
h.set("Content-Type", "application/json");
const msg = await nc.request(subject, new TextEncoder().encode(command), { timeout: 5000, headers: h });
const replyHeaders = {};
for (const key of msg.headers?.keys() ?? []) replyHeaders[key] = msg.headers.values(key);

console.log(JSON.stringify({ ping, info, stats, reply: msg.json(), reply_headers: replyHeaders }));
await nc.close();
