// The browser-console snippet from README.md, run verbatim with the official socket.io-client.
// Usage: node console_snippet.mjs http://127.0.0.1:PORT [websocket]
// Prints one JSON line with what the snippet saw, then exits (non-zero on timeout).
import { io as officialIo } from "socket.io-client";

const base = process.argv[2];
const transports = process.argv[3] ? [process.argv[3]] : undefined;
const io = (url) => officialIo(url.replace("http://localhost:8080", base), transports ? { transports } : {});
const seen = { chunks: [], aiMessage: null, errors: [], thinking: [] };
const console = { log: (...args) => seen.logged = args.join(" ") };

// ---- the snippet, as users paste it ----
const socket = io('http://localhost:8080/chat');
socket.emit('joinConsultation', { consultationId: 'test-123' });
socket.emit('sendMessage', { consultationId: 'test-123', content: 'I have a headache, what should I do?', userId: 'user-1', tenantId: 'tenant-1' });
socket.on('aiMessage', (data) => console.log('AI:', data.content));
// ---- end of the snippet ----

socket.on("aiChunk", (chunk) => seen.chunks.push(chunk));
socket.on("aiThinking", (event) => seen.thinking.push(event.status));
socket.on("error", (error) => seen.errors.push(error));
socket.on("aiMessage", (message) => {
  seen.aiMessage = message;
  seen.transport = socket.io.engine.transport.name;
  setTimeout(() => { process.stdout.write(JSON.stringify(seen) + "\n"); socket.close(); process.exit(0); }, 200);
});
setTimeout(() => { process.stdout.write(JSON.stringify(seen) + "\n"); process.exit(3); }, 15000);
