// The official socket.io-client over HTTPS/WSS through nginx, trusting only the test CA.
// Usage: node tls.mjs URL TOKEN TRANSPORTS CA_FILE
//   TRANSPORTS: comma-separated, e.g. "websocket" or "polling,websocket".
// Joins a consultation, asks, waits for the assistant's reply; prints one JSON line.
import { readFileSync } from "node:fs";
import { io } from "socket.io-client";

const [base, token, transportList, caFile] = process.argv.slice(2);
const seen = { connectErrors: [] };
const print = (code) => {
  process.stdout.write(JSON.stringify(seen) + "\n");
  process.exit(code);
};
const socket = io(`${base}/chat`, {
  auth: { token },
  transports: transportList.split(","),
  ca: readFileSync(caFile),  // certificate verification stays on: only this CA is trusted
  reconnection: false,
});
socket.on("connect_error", (error) => { seen.connectErrors.push(error.message); print(1); });
// Done with both the send's ack and the reply, in whichever order they arrive (the reply is
// produced by its own task on the server: with a fast model it may overtake the ack).
const finish = () => {
  if (seen.reply === undefined || seen.send === undefined) return;
  socket.close();
  print(0);
};
socket.on("aiMessage", (message) => {
  seen.reply = message.content;
  seen.transport = socket.io.engine.transport.name;
  finish();
});
socket.on("connect", async () => {
  // After an upgrade (when there is one), the session rides the WebSocket.
  if (transportList.includes("websocket") && socket.io.engine.transport.name !== "websocket") {
    await new Promise((resolve) => socket.io.engine.once("upgrade", resolve));
  }
  const consultationId = `tls-${transportList.replace(",", "-")}`;
  seen.join = await socket.emitWithAck("joinConsultation", { consultationId });
  seen.send = await socket.emitWithAck("sendMessage", { consultationId, content: "over TLS?" });
  finish();
});
setTimeout(() => print(3), 20000);
