// The reference: a minimal Node socket.io v4 server with the same events and payloads as ours
// (rooms, userMessage to the room but the sender, acks, a simulated streamed AI reply).
// Usage: node reference_server.mjs PORT
import { Server } from "socket.io";
import { randomUUID } from "node:crypto";
import { performance } from "node:perf_hooks";

const port = Number(process.argv[2]);
const io = new Server(port, { cors: { origin: "*" }, perMessageDeflate: false });
const chat = io.of("/chat");
const seqs = new Map();
const nextSeq = (cid) => { const s = (seqs.get(cid) ?? 0) + 1; seqs.set(cid, s); return s; };

function streamReply(cid, text, tokensPerSecond) {
  // A provider streaming `text` word by word at `tokensPerSecond`, relayed to the room.
  const words = text.match(/\S+\s*/g) ?? [];
  const messageId = randomUUID();
  chat.to(cid).emit("aiThinking", { consultationId: cid, status: "processing" });
  let index = 0;
  const sent = [];
  const timer = setInterval(() => {
    if (index < words.length) {
      // Like the benchmark's fake provider, each token is its own emission time (epoch ms).
      const token = `${(performance.timeOrigin + performance.now()).toFixed(3)} `;
      sent.push(token);
      chat.to(cid).emit("aiChunk", { consultationId: cid, messageId, index, content: token, isComplete: false });
      index += 1;
      return;
    }
    clearInterval(timer);
    chat.to(cid).emit("aiChunk", { consultationId: cid, messageId, index, content: "", isComplete: true });
    chat.to(cid).emit("aiMessage", {
      id: messageId, consultationId: cid, seq: nextSeq(cid), role: "assistant",
      content: sent.join(""), timestamp: new Date().toISOString(), model: "reference", status: "complete",
    });
    chat.to(cid).emit("aiThinking", { consultationId: cid, status: "done" });
  }, 1000 / tokensPerSecond);
}

chat.on("connection", (socket) => {
  socket.on("joinConsultation", (data, ack) => {
    socket.join(data.consultationId);
    ack?.({ ok: true, consultation: { consultationId: data.consultationId }, messages: [] });
  });
  socket.on("sendMessage", (data, ack) => {
    const cid = data.consultationId;
    const message = {
      id: randomUUID(), consultationId: cid, seq: nextSeq(cid), role: "user", userId: "bench",
      content: data.content, timestamp: new Date().toISOString(), status: "complete",
    };
    socket.to(cid).emit("userMessage", message);
    ack?.({ ok: true, message });
    if (data.ai) streamReply(cid, `Echo: ${data.content}`, data.ai.tokensPerSecond);
  });
});
console.log(`reference listening on ${port}`);
