// Publish over gRPC-web and watch the message arrive on a uni stream.
//
//   npm install && npm run build
//   SPINWIRE_API_KEY=<grpc_api.key> SPINWIRE_SECRET=<client.token.hmac_secret_key> node examples/publish.mjs
//
// Needs a Spinwire server with grpc_api, uni_grpc and grpc_web enabled and a
// "chat" namespace with history (see README.md).
import { ApiClient, ApiError, connectionToken, consumeUniStream, decodeData } from "../dist/index.js";

const apiUrl = process.env.SPINWIRE_API_URL ?? "http://127.0.0.1:10000";
const uniUrl = process.env.SPINWIRE_UNI_URL ?? "http://127.0.0.1:11000";
const apiKey = process.env.SPINWIRE_API_KEY ?? "";
const secret = process.env.SPINWIRE_SECRET ?? "";
const channel = process.env.SPINWIRE_CHANNEL ?? "chat:demo";

const api = new ApiClient({ baseUrl: apiUrl, apiKey, timeoutMs: 5000 });

// The backend mints the token; a browser would fetch it from there.
const token = await connectionToken(secret, "demo-user", { ttlSeconds: 3600 });
const stream = consumeUniStream({ baseUrl: uniUrl, token, subs: [channel], signal: AbortSignal.timeout(10_000) });

for await (const event of stream) {
  if (event.type === "connect") {
    console.log(`connected as client ${event.client}`);
    const { offset } = await api.publish(channel, { text: "hello from the TypeScript SDK" });
    console.log(`published at offset ${offset}`);
  } else if (event.type === "publication") {
    console.log(`received on ${event.channel}:`, event.data);
    break; // leaving the loop closes the stream
  } else if (event.type === "disconnect") {
    console.log(`disconnected: ${event.code} ${event.reason}`);
  }
}

const history = await api.history(channel, { limit: 10, reverse: true });
console.log(`history of ${channel}:`, history.publications.map((p) => decodeData(p.data)));

try {
  await api.publish("no-such-namespace:x", { text: "nope" });
} catch (err) {
  if (err instanceof ApiError) console.log(`api error ${err.code}: ${err.serverMessage}`);
  else throw err;
}
