// The browser-console snippet from README.md, run verbatim with the official socket.io-client.
// Usage: node console_snippet.mjs http://127.0.0.1:PORT [websocket]
// Prints one JSON line with what the snippet saw, then exits (non-zero on timeout).
import { io as officialIo } from "socket.io-client";
import { readmeSnippet } from "./readme.mjs";

const base = process.argv[2];
const transports = process.argv[3] ? [process.argv[3]] : undefined;
const seen = { chunks: [], aiMessage: null, errors: [], thinking: [], logged: null, warned: [] };
const sockets = [];
const io = (url) => {
  const socket = officialIo(url.replace("http://localhost:8080", base), transports ? { transports } : {});
  sockets.push(socket);
  return socket;
};
const console = { log: (...args) => { seen.logged = args.join(" "); }, warn: (...args) => seen.warned.push(args.join(" ")) };
const print = (code) => { process.stdout.write(JSON.stringify(seen) + "\n"); process.exit(code); };

// The snippet, as users paste it into a console where `io` and `console` are globals.
new Function("io", "console", readmeSnippet())(io, console);
const [socket] = sockets;

socket.on("aiChunk", (chunk) => seen.chunks.push(chunk));
socket.on("aiThinking", (event) => seen.thinking.push(event.status));
socket.on("error", (error) => { seen.errors.push(error); setTimeout(() => print(0), 300); });
socket.on("connect_error", () => setTimeout(() => print(0), 100)); // the snippet said why
socket.on("aiMessage", (message) => {
  seen.aiMessage = message;
  seen.transport = socket.io.engine.transport.name;
  setTimeout(() => { socket.close(); print(0); }, 200);
});
setTimeout(() => print(3), 15000);
