// The reference: a minimal Node socket.io v4 server with the same events and payloads as ours
// (rooms, userMessage to the room but the sender, acks, an AI reply streamed from the same fake
// OpenAI-compatible provider as ours). Usage: node reference_server.mjs PORT PROVIDER_URL
import { Server } from "socket.io";
import { randomUUID } from "node:crypto";

const port = Number(process.argv[2]);
const providerUrl = process.argv[3];
const io = new Server(port, { cors: { origin: "*" }, perMessageDeflate: false });
const chat = io.of("/chat");
const seqs = new Map();
const nextSeq = (cid) => { const s = (seqs.get(cid) ?? 0) + 1; seqs.set(cid, s); return s; };

async function streamReply(cid, text) {
  // Relay the same fake OpenAI-compatible provider our server streams from (SSE over HTTP,
  // model "stamp-20": 50 tokens/s, each token its emission time): one aiChunk per delta.
  const messageId = randomUUID();
  chat.to(cid).emit("aiThinking", { consultationId: cid, status: "processing" });
  const response = await fetch(`${providerUrl}/chat/completions`, {
    method: "POST",
    headers: { "Content-Type": "application/json", Authorization: "Bearer sk-bench" },
    body: JSON.stringify({ model: "stamp-20", stream: true, messages: [{ role: "user", content: text }] }),
  });
  const decoder = new TextDecoder();
  let buffered = "", index = 0;
  const sent = [];
  for await (const bytes of response.body) {
    buffered += decoder.decode(bytes, { stream: true });
    const lines = buffered.split("\n");
    buffered = lines.pop();
    for (const line of lines) {
      if (!line.startsWith("data:")) continue;
      const payload = line.slice(5).trim();
      if (payload === "[DONE]") continue;
      const token = JSON.parse(payload).choices?.[0]?.delta?.content;
      if (!token) continue;
      sent.push(token);
      chat.to(cid).emit("aiChunk", { consultationId: cid, messageId, index, content: token, isComplete: false });
      index += 1;
    }
  }
  chat.to(cid).emit("aiChunk", { consultationId: cid, messageId, index, content: "", isComplete: true });
  chat.to(cid).emit("aiMessage", {
    id: messageId, consultationId: cid, seq: nextSeq(cid), role: "assistant",
    content: sent.join(""), timestamp: new Date().toISOString(), model: "stamp-20", status: "complete",
  });
  chat.to(cid).emit("aiThinking", { consultationId: cid, status: "done" });
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
    if (data.ai) streamReply(cid, data.content).catch((err) => console.error("reply failed", err));
  });
});
console.log(`reference listening on ${port}`);
