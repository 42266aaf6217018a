// Shared by the chat page (/), the operator console (/operator) and the widget (/widget): plain
// JS, no build step. window.Chat = { markdown, Log, Room, call, connect, el, clock,
// tokenSubject, $, status, clientLoaded, humanDialog }.
(function () {
  "use strict";

  // -- Markdown, safely: everything is escaped first, then a small subset is formatted, so a
  // reply can never inject HTML (a <script> in a reply is shown as text).
  function escapeHtml(text) {
    return text.replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
  }

  function inline(escaped) {
    const codes = [];
    let out = escaped.replace(/`([^`]+)`/g, (_, code) => { codes.push(code); return "\u0000" + (codes.length - 1) + "\u0000"; });
    out = out
      .replace(/\*\*([^*]+)\*\*/g, "<strong>$1</strong>")
      .replace(/(^|[^*])\*([^*\s][^*]*)\*/g, "$1<em>$2</em>")
      .replace(/\[([^\]]+)\]\((https?:\/\/[^\s)]+)\)/g, '<a href="$2" target="_blank" rel="noopener noreferrer">$1</a>');
    return out.replace(/\u0000(\d+)\u0000/g, (_, i) => "<code>" + codes[Number(i)] + "</code>");
  }

  function markdown(text) {
    const lines = escapeHtml(text).split("\n");
    const html = [];
    let list = null; // "ul" | "ol"
    let paragraph = [];
    const flush = () => {
      if (paragraph.length) { html.push("<p>" + inline(paragraph.join("<br>")) + "</p>"); paragraph = []; }
      if (list) { html.push("</" + list + ">"); list = null; }
    };
    for (let i = 0; i < lines.length; i++) {
      const line = lines[i];
      if (line.startsWith("```")) {
        flush();
        const code = [];
        for (i++; i < lines.length && !lines[i].startsWith("```"); i++) code.push(lines[i]);
        html.push("<pre><code>" + code.join("\n") + "</code></pre>");
        continue;
      }
      const bullet = line.match(/^\s*[-*]\s+(.*)$/);
      const numbered = line.match(/^\s*\d+[.)]\s+(.*)$/);
      if (bullet || numbered) {
        const kind = bullet ? "ul" : "ol";
        if (paragraph.length) { html.push("<p>" + inline(paragraph.join("<br>")) + "</p>"); paragraph = []; }
        if (list !== kind) { if (list) html.push("</" + list + ">"); html.push("<" + kind + ">"); list = kind; }
        html.push("<li>" + inline((bullet || numbered)[1]) + "</li>");
      } else if (!line.trim()) {
        flush();
      } else {
        if (list) { html.push("</" + list + ">"); list = null; }
        paragraph.push(line);
      }
    }
    flush();
    return html.join("");
  }

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function clock(iso) {
    const at = iso ? new Date(iso) : new Date();
    return at.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  }

  // -- The conversation: stored messages once each (by id, in seq order), replies streaming in
  // chunk by chunk (by index: a chunk already shown is never shown twice).
  class Log {
    constructor(node, whoAmI, labels = {}) {
      this.node = node;
      this.whoAmI = whoAmI; // () => my user id
      this.labels = Object.assign({ you: "You", assistant: "Assistant", support: "support", sources: "Sources" }, labels);
      this.byId = new Map();
      this.streams = new Map(); // messageId -> {bubble, text, index}
    }

    clear() { this.node.textContent = ""; this.byId.clear(); this.streams.clear(); }

    lastSeq() {
      let last = 0;
      for (const m of this.byId.values()) if (m.seq > last) last = m.seq;
      return last;
    }

    add(message) {
      if (this.byId.has(message.id)) return;
      this.byId.set(message.id, message);
      const stream = this.streams.get(message.id);
      if (stream) { this.streams.delete(message.id); this._fill(stream.bubble, message); return; }
      const bubble = this._bubble(message);
      this._place(bubble, message.seq);
      this.scroll();
    }

    streaming(partial) { // a join's "streaming": the text so far of a reply in flight
      if (this.byId.has(partial.messageId)) return;
      this._stream(partial.messageId).text = partial.content;
      this._stream(partial.messageId).index = partial.index;
      this._render(partial.messageId);
    }

    chunk(chunk) {
      if (this.byId.has(chunk.messageId)) return;
      const stream = this._stream(chunk.messageId);
      if (chunk.index <= stream.index) return;
      stream.index = chunk.index;
      stream.text += chunk.content;
      this._render(chunk.messageId);
    }

    notice(text) { // a local note, not stored
      this.node.appendChild(el("div", "msg system", text));
      this.scroll();
    }

    scroll() { this.node.scrollTop = this.node.scrollHeight; }

    _stream(messageId) {
      let stream = this.streams.get(messageId);
      if (!stream) {
        const bubble = el("div", "msg assistant streaming");
        bubble.dataset.id = messageId;
        bubble.append(el("div", "meta", this.labels.assistant + " · " + clock()), el("div", "body"));
        this.node.appendChild(bubble);
        stream = { bubble, text: "", index: -1 };
        this.streams.set(messageId, stream);
      }
      return stream;
    }

    _render(messageId) {
      const stream = this.streams.get(messageId);
      stream.bubble.querySelector(".body").innerHTML = markdown(stream.text);
      this.scroll();
    }

    _bubble(message) {
      const bubble = el("div", "msg");
      bubble.dataset.id = message.id;
      bubble.dataset.seq = String(message.seq);
      this._fill(bubble, message);
      return bubble;
    }

    _fill(bubble, message) {
      const mine = message.userId && message.userId === this.whoAmI() && message.role !== "assistant";
      bubble.className = "msg " + (message.role === "system" ? "system" : mine ? "mine" : message.role === "user" ? "other" : message.role);
      bubble.dataset.seq = String(message.seq);
      bubble.textContent = "";
      if (message.role === "system") { // phrased for this reader when it knows the note
        bubble.textContent = (message.note && this.labels.note && this.labels.note(message)) || message.content;
        return;
      }
      const labels = this.labels;
      const who = mine ? labels.you : message.role === "assistant" ? labels.assistant
        : message.role === "operator" ? (message.authorName || message.userId) + " (" + labels.support + ")" : message.userId;
      const meta = el("div", "meta", who + " · " + clock(message.timestamp));
      if (message.status && message.status !== "complete") meta.appendChild(el("span", "status", message.status));
      const body = el("div", "body");
      body.innerHTML = markdown(message.content); // escaped first: safe for every role
      bubble.append(meta, body);
      const sources = this._sources(message.sources);
      if (sources) bubble.appendChild(sources);
    }

    // The knowledge-base articles a reply cites (all it was given when it cites none), as
    // links when they have an http(s) URL.
    _sources(sources) {
      if (!sources || !sources.length) return null;
      const shown = sources.some((s) => s.cited) ? sources.filter((s) => s.cited) : sources;
      const box = el("div", "sources");
      box.appendChild(el("span", "label", this.labels.sources + ": "));
      shown.forEach((source, i) => {
        if (i) box.append(", ");
        if (source.url && /^https?:\/\//.test(source.url)) {
          const link = el("a", "source", source.title);
          link.href = source.url;
          link.target = "_blank";
          link.rel = "noopener noreferrer";
          box.appendChild(link);
        } else {
          box.appendChild(el("span", "source", source.title));
        }
      });
      return box;
    }

    _place(bubble, seq) {
      const later = [...this.node.children].find((n) => n.dataset.seq && Number(n.dataset.seq) > seq);
      this.node.insertBefore(bubble, later || null);
    }
  }

  // -- Acks as promises, with a timeout.
  function call(socket, event, data, timeout = 10000) {
    return new Promise((resolve) => {
      socket.timeout(timeout).emit(event, data, (err, ack) => {
        resolve(err ? { ok: false, error: { code: "timeout", message: "No answer from the server" } } : ack);
      });
    });
  }

  // -- One joined consultation on a socket: joins (again after every reconnection, with
  // lastSeq, so nothing is missed; again after a history_gap, from its afterSeq), and routes
  // the room's events to the log. hooks: onJoined(ack), onError(error), extra() (more fields
  // for the join: the page context).
  class Room {
    constructor(socket, consultationId, log, hooks = {}) {
      this.socket = socket;
      this.id = consultationId;
      this.log = log;
      this.hooks = hooks;
      this.handlers = {
        userMessage: (m) => m.consultationId === this.id && log.add(m),
        aiMessage: (m) => m.consultationId === this.id && log.add(m),
        systemMessage: (m) => m.consultationId === this.id && log.add(m),
        aiChunk: (c) => c.consultationId === this.id && log.chunk(c),
        error: (e) => e.consultationId === this.id && e.code === "history_gap" && this.catchUp(e.afterSeq),
      };
      for (const [event, handler] of Object.entries(this.handlers)) socket.on(event, handler);
      this.rejoin = () => this.join();
      socket.on("connect", this.rejoin);
    }

    async join(afterSeq) {
      const lastSeq = afterSeq !== undefined ? afterSeq : this.log.lastSeq() || undefined;
      const extra = this.hooks.extra ? this.hooks.extra() : {};
      const ack = await call(this.socket, "joinConsultation", Object.assign({ consultationId: this.id, lastSeq }, extra));
      if (!ack.ok) { this.hooks.onError && this.hooks.onError(ack.error); return ack; }
      ack.messages.forEach((m) => this.log.add(m));
      if (ack.streaming) this.log.streaming(ack.streaming);
      this.hooks.onJoined && this.hooks.onJoined(ack);
      return ack;
    }

    // Messages after afterSeq may be missing here (the server could not read them): join again
    // from there until it answers; the log places what comes back by seq, once each.
    async catchUp(afterSeq) {
      if (this.catchingUp) return;
      this.catchingUp = true;
      try {
        for (let delay = 1000; !this.closed; delay = Math.min(delay * 2, 30000)) {
          await new Promise((resolve) => setTimeout(resolve, delay));
          if (this.socket.connected && (await this.join(afterSeq)).ok) break;
        }
      } finally {
        this.catchingUp = false;
      }
    }

    close() {
      this.closed = true;
      for (const [event, handler] of Object.entries(this.handlers)) this.socket.off(event, handler);
      this.socket.off("connect", this.rejoin);
    }
  }

  // -- "Talk to a human" as an in-page question (#human opens #human-dialog; #human-reason,
  // #human-cancel, #human-confirm): Cancel or Escape asks nothing; ask(reason) asks.
  function humanDialog(ask) {
    const cancel = () => { $("human-dialog").hidden = true; $("human").focus(); };
    $("human").onclick = () => { $("human-dialog").hidden = false; $("human-reason").focus(); };
    $("human-cancel").onclick = cancel;
    $("human-reason").onkeydown = (e) => {
      if (e.key === "Enter") { e.preventDefault(); $("human-confirm").click(); }
      if (e.key === "Escape") { e.preventDefault(); e.stopPropagation(); cancel(); }
    };
    $("human-confirm").onclick = () => {
      const reason = $("human-reason").value.trim() || undefined;
      $("human-dialog").hidden = true;
      $("human-reason").value = "";
      ask(reason);
    };
  }

  // -- The socket: a token in JWT mode, a chosen identity in dev auth.
  function connect(credentials, onStatus) {
    const auth = credentials.token ? { token: credentials.token } : { userId: credentials.userId, name: credentials.name, role: credentials.role };
    const socket = io(location.origin + "/chat", { auth, transports: ["websocket", "polling"] });
    socket.on("connect", () => onStatus("connected", "Connected"));
    socket.on("disconnect", (reason) => onStatus("warn", reason === "io client disconnect" ? "Disconnected" : "Reconnecting…"));
    socket.io.on("reconnect_attempt", () => onStatus("warn", "Reconnecting…"));
    socket.on("connect_error", (err) => onStatus("bad", "Refused: " + ((err.data && err.data.message) || err.message)));
    return socket;
  }

  // The user a JWT names (its "sub"), to tell my messages from the others': display only, the
  // server verifies the token.
  function tokenSubject(token) {
    try {
      const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
      return JSON.parse(atob(part)).sub || null;
    } catch (e) {
      return null;
    }
  }

  // -- the page's status pill, shared by both pages ---------------------------------------------
  const $ = (id) => document.getElementById(id);

  function status(kind, text) {
    $("status").className = "pill " + (kind === "connected" ? "ok" : kind);
    $("status").textContent = text;
  }

  // Whether the Socket.IO client script loaded (local bundle, CDN or fallback); says so if not.
  function clientLoaded() {
    if (typeof io !== "undefined") return true;
    status("bad", "The Socket.IO client could not be loaded");
    return false;
  }

  window.Chat = { markdown, Log, Room, call, connect, el, clock, tokenSubject, $, status, clientLoaded, humanDialog };
})();
