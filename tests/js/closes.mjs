// How the official socket.io-client sees a server-initiated close.
// Usage: node closes.mjs URL TOKEN TRANSPORTS [watchMs]
//   TRANSPORTS: comma-separated, e.g. "websocket" or "polling,websocket" or "polling".
// Prints one JSON line once the client disconnected and `watchMs` more passed (to prove it
// stayed disconnected, or saw it reconnect), then exits.
import { io } from "socket.io-client";

const [base, token, transportList, watch] = process.argv.slice(2);
const watchMs = Number(watch || 3000);
const seen = { connects: 0, errors: [], disconnects: [], transport: null, connectErrors: [] };
const started = Date.now();
const socket = io(`${base}/chat`, {
  auth: { token },
  transports: transportList.split(","),
  reconnectionDelay: 100,
  reconnectionDelayMax: 200,
});
const print = (code) => {
  process.stdout.write(JSON.stringify(seen) + "\n");
  process.exit(code);
};
socket.on("connect", () => {
  seen.connects += 1;
  seen.connectedAt = Date.now();
  // Wait for the upgrade (when there is one), then say which transport carries the session.
  const report = () => { seen.transport = socket.io.engine.transport.name; };
  socket.io.engine.once("upgrade", report);
  report();
  process.stdout.write(JSON.stringify({ connected: true }) + "\n");
});
socket.on("error", (error) => seen.errors.push({ code: error.code, at: Date.now() }));
socket.on("connect_error", (error) => seen.connectErrors.push(error.message));
socket.on("disconnect", (reason) => {
  seen.disconnects.push({ reason, at: Date.now(), active: socket.active });
  if (seen.disconnects.length === 1) setTimeout(() => { socket.close(); print(0); }, watchMs);
});
setTimeout(() => print(3), 30000);
