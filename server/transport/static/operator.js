(() => {
  const { $, status } = Chat;
  if (!Chat.clientLoaded()) return;

  const saved = (key, fallback) => localStorage.getItem("operator." + key) || fallback;
  $("user-id").value = saved("userId", "operator-" + Math.random().toString(36).slice(2, 6));
  $("name").value = saved("name", "Support");
  $("token").value = saved("token", "");
  localStorage.setItem("operator.userId", $("user-id").value);

  let socket = null;
  let me = null;
  let selected = null;
  let queue = [];
  const held = new Map(); // consultationId -> {room, log, node, consultation, typing: Map}

  const label = (mode) => ({ ai: "assistant", waiting: "waiting", operator: "with me", closed: "closed" })[mode] || mode;
  const ago = (iso) => {
    const seconds = Math.max(0, Math.round((Date.now() - new Date(iso).getTime()) / 1000));
    return seconds < 60 ? seconds + " s" : Math.floor(seconds / 60) + " min " + (seconds % 60) + " s";
  };

  // System notes as an operator reads them (the stored text is the customer's wording).
  function operatorNote(message) {
    const name = message.authorName || "An operator";
    const mine = message.userId && message.userId === me;
    return ({
      operator_requested: "The customer asked for a human.",
      operator_joined: mine ? "You joined the consultation." : name + " joined the consultation.",
      released: "Handed back to the assistant.",
      closed: "The consultation was closed.",
      timed_out: "Nobody took the request in time: the assistant goes on.",
      requeued: name + " was disconnected: the consultation went back to the queue.",
    })[message.note] || null;
  }

  // Who the customer is: a visitor from the website (and the page), or a signed-in user.
  function who(role, page) {
    const box = Chat.el("div", "sub who");
    if (role === "visitor") box.appendChild(Chat.el("span", "pill warn", "visitor"));
    if (page && /^https?:\/\//.test(page.url)) {
      const link = Chat.el("a", "page", page.title || page.url);
      link.href = page.url;
      link.target = "_blank";
      link.rel = "noopener noreferrer";
      box.append(" ", link);
    }
    return box;
  }

  function renderQueue() {
    $("queue-count").textContent = queue.length ? "(" + queue.length + ")" : "";
    const box = $("queue");
    box.textContent = "";
    if (!queue.length) { box.appendChild(Chat.el("div", "empty", "Nobody is waiting.")); return; }
    for (const item of queue) {
      const node = Chat.el("div", "item queued");
      node.dataset.id = item.consultationId;
      const top = Chat.el("div", "top");
      top.append(Chat.el("strong", "", "#" + item.position + " " + item.userId), Chat.el("span", "sub waited", ago(item.waitingSince)));
      const accept = Chat.el("button", "primary accept", "Accept");
      accept.onclick = () => acceptOne(item.consultationId);
      node.append(top, who(item.userRole, item.page), Chat.el("div", "sub", item.consultationId + (item.reason ? " — " + item.reason : "")), accept);
      node.querySelector(".waited").dataset.since = item.waitingSince;
      box.appendChild(node);
    }
  }

  function renderMine() {
    const box = $("mine");
    box.textContent = "";
    if (!held.size) { box.appendChild(Chat.el("div", "empty", "None yet: accept one from the queue.")); return; }
    for (const [id, entry] of held) {
      const node = Chat.el("div", "item mine-item" + (id === selected ? " selected" : ""));
      node.dataset.id = id;
      const top = Chat.el("div", "top");
      top.append(Chat.el("strong", "", entry.consultation.ownerId || id), Chat.el("span", "pill", label(entry.consultation.mode)));
      const context = entry.consultation.context || {};
      node.append(top, who(entry.consultation.ownerRole, context.page), Chat.el("div", "sub", id));
      node.onclick = () => select(id);
      box.appendChild(node);
    }
    localStorage.setItem("operator.held", JSON.stringify([...held.keys()]));
  }

  function select(id) {
    selected = id;
    for (const [key, entry] of held) entry.node.hidden = key !== id;
    const entry = held.get(id);
    const open = Boolean(entry) && entry.consultation.mode === "operator";
    $("chat-title").textContent = entry ? (entry.consultation.ownerId || "") + " · " + id : "No consultation selected";
    $("chat-mode").hidden = !entry;
    if (entry) $("chat-mode").textContent = label(entry.consultation.mode);
    $("content").disabled = $("send").disabled = $("release").disabled = !open;
    $("close").disabled = !entry || entry.consultation.mode === "closed";
    showTyping();
    renderMine();
  }

  function showTyping() {
    const entry = held.get(selected);
    const who = entry ? [...entry.typing.keys()] : [];
    $("indicator").textContent = who.length ? who.join(", ") + " is typing…" : "";
  }

  // Keeps a consultation on screen: its own log, joined again after every reconnection.
  function hold(consultation, ack) {
    let entry = held.get(consultation.id);
    if (!entry) {
      const node = Chat.el("div", "log");
      node.dataset.consultation = consultation.id;
      $("logs").appendChild(node);
      const log = new Chat.Log(node, () => me, { note: operatorNote });
      const room = new Chat.Room(socket, consultation.id, log, {
        onJoined: (joined) => update(joined.consultation),
        onError: (error) => log.notice("Could not join: " + error.message),
      });
      entry = { room, log, node, consultation, typing: new Map() };
      held.set(consultation.id, entry);
    }
    if (ack) { ack.messages.forEach((m) => entry.log.add(m)); if (ack.streaming) entry.log.streaming(ack.streaming); }
    update(consultation);
    return entry;
  }

  function update(consultation) {
    const entry = held.get(consultation.id);
    if (!entry) return;
    entry.consultation = { ...entry.consultation, ...consultation };
    if (selected === consultation.id || !selected) select(consultation.id); else renderMine();
  }

  async function acceptOne(consultationId) {
    const ack = await Chat.call(socket, "acceptConsultation", { consultationId });
    if (!ack.ok) { alert("Could not accept: " + ack.error.message); return; }
    hold(ack.consultation, ack);
    select(consultationId);
  }

  function start() {
    if (socket) { for (const entry of held.values()) { entry.room.close(); entry.node.remove(); } held.clear(); socket.disconnect(); }
    const token = $("token").value.trim();
    me = token ? (Chat.tokenSubject(token) || $("user-id").value) : $("user-id").value.trim();
    $("me").textContent = (token ? "token: " : "") + me;
    socket = Chat.connect({ token, userId: me, name: $("name").value.trim(), role: "operator" }, status);
    socket.on("operatorQueue", (event) => { queue = event.items; renderQueue(); });
    socket.on("newSupportRequest", (event) => {
      status("connected", "New request from " + event.userId);
      document.title = "(" + (queue.length + 1) + ") Operator console";
    });
    socket.on("consultationUpdated", (event) => {
      const entry = held.get(event.consultationId);
      if (!entry) return;
      update({ id: event.consultationId, mode: event.mode, operator: event.operator || null });
    });
    socket.on("typing", (event) => {
      const entry = held.get(event.consultationId);
      if (!entry || event.userId === me) return;
      if (event.isTyping) entry.typing.set(event.userId, true); else entry.typing.delete(event.userId);
      showTyping();
    });
    socket.on("userOffline", (event) => { const entry = held.get(event.consultationId); if (entry) { entry.typing.delete(event.userId); showTyping(); } });
    socket.on("error", (event) => status("bad", event.code + ": " + event.message));
    socket.on("connect", async () => {
      const ack = await Chat.call(socket, "getOperatorQueue", {});
      if (ack.ok) { queue = ack.items; renderQueue(); } else status("bad", ack.error.message);
    });
    // What I held before the reload: join again; keep the ones still mine (or now closed).
    const before = JSON.parse(localStorage.getItem("operator.held") || "[]");
    socket.once("connect", async () => {
      for (const id of before) {
        const ack = await Chat.call(socket, "joinConsultation", { consultationId: id });
        if (ack.ok && ack.consultation.operator && ack.consultation.operator.id === me) hold(ack.consultation, ack);
        else if (ack.ok) await Chat.call(socket, "leaveConsultation", { consultationId: id });
      }
      renderMine();
    });
  }

  async function send() {
    const content = $("content").value;
    if (!selected || !content.trim()) return;
    $("content").value = "";
    const ack = await Chat.call(socket, "sendMessage", { consultationId: selected, content, clientMessageId: crypto.randomUUID() });
    if (ack.ok) { held.get(selected).log.add(ack.message); Chat.call(socket, "typing", { consultationId: selected, isTyping: false }); }
    else { $("content").value = content; held.get(selected).log.notice("Not sent: " + ack.error.message); }
  }

  let typingSent = 0;
  $("composer").onsubmit = (e) => { e.preventDefault(); send(); };
  $("content").onkeydown = (e) => { if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); send(); } };
  $("content").oninput = () => {
    if (!selected || Date.now() - typingSent < 2000) return;
    typingSent = Date.now();
    Chat.call(socket, "typing", { consultationId: selected, isTyping: true });
  };
  $("release").onclick = async () => {
    const ack = await Chat.call(socket, "releaseConsultation", { consultationId: selected });
    if (ack.ok) update(ack.consultation); else alert(ack.error.message);
  };
  $("close").onclick = async () => {
    if (!confirm("Close this consultation? The user can no longer write in it.")) return;
    const ack = await Chat.call(socket, "closeConsultation", { consultationId: selected });
    if (ack.ok) update(ack.consultation); else alert(ack.error.message);
  };
  $("apply").onclick = () => {
    for (const key of ["user-id", "name", "token"]) localStorage.setItem("operator." + (key === "user-id" ? "userId" : key), $(key).value.trim());
    start();
  };
  // Waiting times tick on their own.
  setInterval(() => { for (const node of document.querySelectorAll(".waited")) node.textContent = ago(node.dataset.since); }, 1000);
  // -- Insights: what people ask, what the knowledge base answers (GET /api/stats) ----------
  async function loadInsights() {
    const body = $("insights-body");
    const token = $("token").value.trim();
    if (!token) { body.textContent = ""; body.appendChild(Chat.el("div", "empty", "Insights need a token (JWT mode).")); return; }
    const since = new Date(Date.now() - 7 * 24 * 3600 * 1000).toISOString();
    let stats;
    try {
      const response = await fetch("/api/stats?from=" + encodeURIComponent(since), { headers: { Authorization: "Bearer " + token } });
      stats = await response.json();
    } catch (e) { stats = { ok: false, error: { message: String(e) } }; }
    body.textContent = "";
    if (!stats.ok) { body.appendChild(Chat.el("div", "empty", "No insights: " + stats.error.message)); return; }
    const list = (title, items, label) => {
      body.appendChild(Chat.el("h3", "", title));
      const ol = Chat.el("ol", "top");
      if (!items.length) ol.appendChild(Chat.el("li", "sub", "nothing yet"));
      for (const item of items) ol.appendChild(Chat.el("li", "", label(item) + " ×" + item.count));
      body.appendChild(ol);
    };
    list("Popular questions", stats.topQuestions, (q) => q.text);
    list("Most cited articles", stats.topSources, (s) => s.title);
    body.appendChild(Chat.el("p", "sub unanswered", stats.unanswered + " replies had no source (gaps in the knowledge base)"));
  }
  $("insights").addEventListener("toggle", () => { if ($("insights").open) loadInsights(); });
  setInterval(() => { if ($("insights").open) loadInsights(); }, 60000);

  start();
})();
