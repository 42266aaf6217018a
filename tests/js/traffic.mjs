// Real traffic from the official socket.io-client, for the operations tests.
// Usage: node traffic.mjs BASE_URL CLIENTS
// Each client connects (dev auth, its own identity), joins its consultation and asks one
// question. Prints JSON lines: {"step": "streaming"} once every reply is streaming,
// {"step": "answered", ...} once every reply is stored; then keeps the sockets open until
// stdin closes, and exits after disconnecting them.
import { io } from "socket.io-client";

const [base, count] = [process.argv[2], Number(process.argv[3] || 3)];
const say = (line) => process.stdout.write(JSON.stringify(line) + "\n");
const sockets = [];
let streaming = 0;
let answered = 0;

for (let i = 0; i < count; i++) {
  const socket = io(base + "/chat", { transports: ["websocket"], auth: { userId: `traffic-${i}` } });
  sockets.push(socket);
  const consultationId = `traffic-${i}`;
  let sawChunk = false;
  socket.on("aiChunk", () => {
    if (!sawChunk && ++streaming === count) say({ step: "streaming" });
    sawChunk = true;
  });
  socket.on("aiMessage", () => {
    if (++answered === count) say({ step: "answered" });
  });
  socket.on("connect", async () => {
    const joined = await socket.emitWithAck("joinConsultation", { consultationId });
    if (!joined.ok) throw new Error(JSON.stringify(joined));
    const sent = await socket.emitWithAck("sendMessage", { consultationId, content: `question ${i} ` + "and more words ".repeat(10) });
    if (!sent.ok) throw new Error(JSON.stringify(sent));
  });
}
process.stdin.resume();
process.stdin.on("end", () => {
  for (const socket of sockets) socket.disconnect();
  setTimeout(() => process.exit(0), 200);
});
setTimeout(() => { say({ step: "timeout" }); process.exit(3); }, 60000);
