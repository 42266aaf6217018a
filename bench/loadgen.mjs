// Load generator on the official socket.io-client. Prints one JSON line per measured phase:
//   {"phase", "start", "end" (epoch ms), "sent", "delivered", "expected", "p50", "p99", ...}
// Usage: node loadgen.mjs SCENARIO URL TOKEN
import { io } from "socket.io-client";
import { performance } from "node:perf_hooks";

const [scenario, url, token] = process.argv.slice(2);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const emitPhase = (record) => process.stdout.write(JSON.stringify(record) + "\n");

// Wall-clock time in fractional ms, comparable with the provider's time.time() stamps:
// performance.timeOrigin + now() drifts from the system clock (~1 ms seen), so pin it to the
// moment Date.now() ticks over.
const wallOffset = (() => {
  const tick = Date.now();
  while (Date.now() === tick);
  return Date.now() - (performance.timeOrigin + performance.now());
})();
const wallNow = () => performance.timeOrigin + performance.now() + wallOffset;

function percentile(sorted, p) {
  if (!sorted.length) return null;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}

async function connectMany(count, transports = ["websocket"]) {
  const sockets = [];
  for (let i = 0; i < count; i += 50) {
    const batch = [];
    for (let j = i; j < Math.min(count, i + 50); j++) {
      const socket = io(`${url}/chat`, { transports, auth: token ? { token } : {}, reconnection: false, forceNew: true });
      sockets.push(socket);
      batch.push(new Promise((resolve, reject) => { socket.once("connect", resolve); socket.once("connect_error", reject); }));
    }
    await Promise.all(batch);
  }
  return sockets;
}

const join = (socket, consultationId) => new Promise((resolve, reject) =>
  socket.timeout(30000).emit("joinConsultation", { consultationId }, (err, ack) => (err || !ack.ok ? reject(err ?? ack) : resolve(ack))));

function closeAll(sockets) { for (const s of sockets) s.close(); }

async function storm() {
  const start = Date.now();
  const sockets = await connectMany(1000);
  const connected = Date.now();
  await sleep(3000);  // the orchestrator reads RSS while all are connected and idle
  emitPhase({ phase: "storm", start, end: Date.now(), connectMs: connected - start, sockets: sockets.length });
  closeAll(sockets);
}

// Rooms of `size` members; member 0 of each room sends at `perRoomRate` msg/s for `seconds`.
async function measureRooms(rooms, size, rates, seconds, label, stopAboveP99) {
  const sockets = await connectMany(rooms * size);
  const members = [];
  for (let r = 0; r < rooms; r++) {
    const group = sockets.slice(r * size, (r + 1) * size);
    await Promise.all(group.map((s) => join(s, `${label}-${r}`)));
    members.push(group);
  }
  let latencies = [];
  let delivered = 0;
  for (const socket of sockets) {
    socket.on("userMessage", (m) => { latencies.push(performance.now() - Number(m.content.slice(2))); delivered += 1; });
  }
  await sleep(500);
  for (const rate of rates) {
    latencies = []; delivered = 0;
    let sent = 0;
    const start = Date.now();
    const interval = 1000 / (rate / rooms);
    const deadline = performance.now() + seconds * 1000;
    await Promise.all(members.map(async (group, r) => {
      let next = performance.now() + (interval * r) / rooms;  // spread senders over the interval
      while (next < deadline) {
        const wait = next - performance.now();
        if (wait > 0) await sleep(wait);
        group[0].emit("sendMessage", { consultationId: `${label}-${r}`, content: `t=${performance.now()}` });
        sent += 1;
        next += interval;
      }
    }));
    await sleep(1500);  // let the tail arrive
    const sorted = latencies.sort((a, b) => a - b);
    const record = {
      phase: `${label}@${rate}`, rate, start, end: Date.now() - 1500, sent, delivered,
      expected: sent * (size - 1), p50: percentile(sorted, 50), p99: percentile(sorted, 99),
    };
    emitPhase(record);
    if (stopAboveP99 && (record.p99 === null || record.p99 > stopAboveP99 || delivered < 0.95 * record.expected)) break;
  }
  closeAll(sockets);
}

async function aiStreaming(consultations) {
  const watchers = 3, words = 495;
  const sockets = await connectMany(consultations * (watchers + 1));
  const groups = [];
  for (let c = 0; c < consultations; c++) {
    const group = sockets.slice(c * (watchers + 1), (c + 1) * (watchers + 1));
    await Promise.all(group.map((s) => join(s, `ai-${c}`)));
    groups.push(group);
  }
  let chunks = 0, tokens = 0, finished = 0, gaps = [], relay = [], held = [];
  const lastChunkAt = new Map();
  const done = new Promise((resolve) => {
    for (const socket of sockets) {
      socket.on("aiChunk", (chunk) => {
        chunks += 1;
        const now = performance.now(), wall = wallNow();
        // Tokens are their provider's emission times: the newest one in a chunk tells how long
        // the relay took to bring the chunk here once it was complete; the oldest one how long
        // coalescing held the chunk's first token on top of that.
        const stamps = chunk.content.split(" ").filter(Boolean).map(Number);
        tokens += stamps.length;
        if (stamps.length) {
          relay.push(wall - Math.max(...stamps));
          held.push(wall - Math.min(...stamps));
        }
        const previous = lastChunkAt.get(socket);
        if (previous !== undefined && !chunk.isComplete) gaps.push(now - previous);
        lastChunkAt.set(socket, now);
      });
      socket.on("aiMessage", () => { finished += 1; if (finished === sockets.length) resolve(); });
    }
  });
  const text = Array.from({ length: words }, (_, i) => `w${i}`).join(" ");
  const start = Date.now();
  for (let c = 0; c < consultations; c++) {
    groups[c][0].emit("sendMessage", { consultationId: `ai-${c}`, content: text, ai: true });
  }
  await Promise.race([done, sleep(60000)]);
  const sorted = gaps.sort((a, b) => a - b);
  const relaySorted = relay.sort((a, b) => a - b);
  const heldSorted = held.sort((a, b) => a - b);
  emitPhase({ phase: `ai@${consultations}`, start, end: Date.now(), delivered: chunks, tokens, finished, expected: sockets.length,
              gapP50: percentile(sorted, 50), gapP99: percentile(sorted, 99),
              relayP50: percentile(relaySorted, 50), relayP99: percentile(relaySorted, 99),
              oldestP50: percentile(heldSorted, 50), oldestP99: percentile(heldSorted, 99) });
  closeAll(sockets);
}

// Several instances: rooms whose members are all on one instance (room r on instance r mod
// `busy`); the instances after the first `busy` ones have no member anywhere. URL is a
// comma-separated list. One phase at a fixed rate.
async function clusterRooms(rooms, size, rate, seconds, busy) {
  const urls = url.split(",");
  const sockets = [];
  const members = [];
  for (let r = 0; r < rooms; r++) {
    const target = urls[r % busy];
    const group = await Promise.all(Array.from({ length: size }, () => new Promise((resolve, reject) => {
      const socket = io(`${target}/chat`, { transports: ["websocket"], auth: token ? { token } : {}, reconnection: false, forceNew: true });
      socket.once("connect", () => resolve(socket));
      socket.once("connect_error", reject);
    })));
    await Promise.all(group.map((s) => join(s, `cluster-${r}`)));
    sockets.push(...group);
    members.push(group);
  }
  // Each idle instance serves one user of an unrelated consultation, as a real instance would
  // (the stock manager subscribes to Redis only once its first client connects).
  for (const [i, target] of urls.slice(busy).entries()) {
    const socket = io(`${target}/chat`, { transports: ["websocket"], auth: token ? { token } : {}, reconnection: false, forceNew: true });
    await new Promise((resolve, reject) => { socket.once("connect", resolve); socket.once("connect_error", reject); });
    await join(socket, `cluster-elsewhere-${i}`);
    sockets.push(socket);
  }
  let delivered = 0;
  const latencies = [];
  for (const socket of sockets) {
    socket.on("userMessage", (m) => { latencies.push(performance.now() - Number(m.content.slice(2))); delivered += 1; });
  }
  emitPhase({ ready: true });  // the orchestrator reads the instances' counters now
  await sleep(1000);
  let sent = 0;
  const start = Date.now();
  const interval = 1000 / (rate / rooms);
  const deadline = performance.now() + seconds * 1000;
  await Promise.all(members.map(async (group, r) => {
    let next = performance.now() + (interval * r) / rooms;
    while (next < deadline) {
      const wait = next - performance.now();
      if (wait > 0) await sleep(wait);
      group[0].emit("sendMessage", { consultationId: `cluster-${r}`, content: `t=${performance.now()}` });
      sent += 1;
      next += interval;
    }
  }));
  await sleep(1500);
  const sorted = latencies.sort((a, b) => a - b);
  emitPhase({ phase: `cluster@${rate}`, rate, start, end: Date.now() - 1500, sent, delivered,
              expected: sent * (size - 1), p50: percentile(sorted, 50), p99: percentile(sorted, 99) });
  closeAll(sockets);
}

const fanoutRates = process.env.BENCH_RATES?.split(",").map(Number) ?? [100, 200, 400, 800, 1200, 1600, 2400, 3200];
const scenarios = {
  storm,
  // BENCH_RATES / BENCH_SECONDS: a fixed rate held longer, for profiling one load level.
  fanout: () => measureRooms(50, 20, fanoutRates, Number(process.env.BENCH_SECONDS ?? 4), "fanout", 200),
  bigroom: () => measureRooms(1, 1000, [10], 10, "bigroom", null),
  ai: () => aiStreaming(100),
  ailight: () => aiStreaming(10),  // the relay's own latency, on a machine that is not busy
  cluster: () => clusterRooms(30, 10, Number(process.env.BENCH_RATE ?? 300), Number(process.env.BENCH_SECONDS ?? 10), 2),
};
await scenarios[scenario]();
process.exit(0);
