// The operator console: the queue (first question, wait, who, page), the consultations I hold
// (several at once, one shown, unread counts, selection kept across reloads), recent ones,
// canned replies (/shortcut), keyboard shortcuts, insights. Plain JS, no build step.
(() => {
  const { $, status, el } = Chat;
  if (!Chat.clientLoaded()) return;

  const saved = (key, fallback) => localStorage.getItem("operator." + key) || fallback;
  $("user-id").value = saved("userId", "operator-" + Math.random().toString(36).slice(2, 6));
  $("name").value = saved("name", "Support");
  $("token").value = saved("token", "");
  $("sound").checked = saved("sound", "") === "on";
  localStorage.setItem("operator.userId", $("user-id").value);

  let socket = null;
  let me = null;
  let selected = null;
  let queue = [];
  let canned = [];
  const held = new Map(); // consultationId -> {room, log, node, consultation, typing: Map, unread}

  const label = (mode) => ({ ai: "assistant", waiting: "waiting", operator: "with me", closed: "closed" })[mode] || mode;
  const ago = (iso) => {
    const seconds = Math.max(0, Math.round((Date.now() - new Date(iso).getTime()) / 1000));
    return seconds < 60 ? seconds + " s" : Math.floor(seconds / 60) + " min " + (seconds % 60) + " s";
  };
  const active = (entry) => entry.consultation.mode === "operator" || entry.consultation.mode === "waiting";

  // -- System notes as an operator reads them (the stored text is the customer's wording) ----
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
    const box = el("div", "sub who");
    if (role === "visitor") box.appendChild(el("span", "pill warn", "visitor"));
    if (page && /^https?:\/\//.test(page.url)) {
      const link = el("a", "page", page.title || page.url);
      link.href = page.url;
      link.target = "_blank";
      link.rel = "noopener noreferrer";
      box.append(" ", link);
    }
    return box;
  }

  // -- The tab's title: what needs me (waiting + unread), and an optional sound -------------
  function badge() {
    const unread = [...held.values()].reduce((sum, entry) => sum + entry.unread, 0);
    const count = queue.length + unread;
    document.title = (count ? "(" + count + ") " : "") + "Operator console";
  }

  let audio = null;
  function chime() {
    if (!$("sound").checked) return;
    try {
      audio = audio || new AudioContext();
      const tone = audio.createOscillator();
      const gain = audio.createGain();
      tone.frequency.value = 880;
      gain.gain.setValueAtTime(0.15, audio.currentTime);
      gain.gain.exponentialRampToValueAtTime(0.001, audio.currentTime + 0.4);
      tone.connect(gain).connect(audio.destination);
      tone.start();
      tone.stop(audio.currentTime + 0.4);
    } catch (e) { /* no audio here */ }
  }

  // -- Lists -------------------------------------------------------------------------------------
  function renderQueue() {
    $("queue-count").textContent = queue.length ? "(" + queue.length + ")" : "";
    const box = $("queue");
    box.textContent = "";
    if (!queue.length) box.appendChild(el("div", "empty", "Nobody is waiting."));
    for (const item of queue) {
      const node = el("div", "item queued");
      node.dataset.id = item.consultationId;
      const top = el("div", "top");
      top.append(el("strong", "", "#" + item.position + " " + (item.userName || item.userId)), el("span", "sub waited", ago(item.waitingSince)));
      node.append(top, who(item.userRole, item.page));
      if (item.preview) node.appendChild(el("div", "preview", "“" + item.preview + "”"));
      node.appendChild(el("div", "sub", item.consultationId + (item.reason ? " — " + item.reason : "")));
      const accept = el("button", "primary accept", "Accept");
      accept.onclick = () => acceptOne(item.consultationId);
      node.appendChild(accept);
      node.querySelector(".waited").dataset.since = item.waitingSince;
      box.appendChild(node);
    }
    badge();
  }

  function renderMine() {
    const mine = $("mine");
    const recent = $("recent");
    mine.textContent = recent.textContent = "";
    for (const [id, entry] of held) {
      const node = el("div", "item mine-item" + (id === selected ? " selected" : ""));
      node.dataset.id = id;
      node.tabIndex = 0;
      const top = el("div", "top");
      top.append(el("strong", "", entry.consultation.ownerName || entry.consultation.ownerId || id), el("span", "pill", label(entry.consultation.mode)));
      if (entry.unread) top.appendChild(el("span", "pill unread", String(entry.unread)));
      const context = entry.consultation.context || {};
      node.append(top, who(entry.consultation.ownerRole, context.page), el("div", "sub", id));
      node.onclick = () => select(id);
      node.onkeydown = (e) => { if (e.key === "Enter") select(id); };
      (active(entry) ? mine : recent).appendChild(node);
    }
    if (!mine.children.length) mine.appendChild(el("div", "empty", "None yet: accept one from the queue."));
    if (!recent.children.length) recent.appendChild(el("div", "empty", "Closed and handed-back ones show here."));
    localStorage.setItem("operator.held", JSON.stringify([...held.keys()]));
    badge();
  }

  // -- One conversation on screen ------------------------------------------------------------
  function select(id) {
    selected = held.has(id) ? id : null;
    if (selected) localStorage.setItem("operator.selected", selected); else localStorage.removeItem("operator.selected");
    for (const [key, entry] of held) entry.node.hidden = key !== selected;
    const entry = held.get(selected);
    if (entry) entry.unread = 0;
    const c = entry ? entry.consultation : null;
    const open = Boolean(c) && c.mode === "operator";
    $("chat-title").textContent = c ? (c.ownerName || c.ownerId || "") : "No consultation selected";
    $("chat-details").textContent = c ? [
      c.ownerName ? c.ownerId : null,
      c.ownerRole === "visitor" ? "visitor" : c.ownerRole || "user",
      c.id,
      c.rating ? "rated " + "★".repeat(c.rating.score) + (c.rating.comment ? " “" + c.rating.comment + "”" : "") : null,
      c.context && c.context.page ? (c.context.page.title || c.context.page.url) : null,
    ].filter(Boolean).join(" · ") : "";
    $("chat-mode").hidden = !c;
    if (c) $("chat-mode").textContent = label(c.mode);
    $("content").disabled = $("send").disabled = $("release").disabled = !open;
    $("close").disabled = !c || c.mode === "closed";
    $("close-dialog").hidden = true;
    showTyping();
    renderMine();
  }

  function step(delta) { // Alt+↑/↓: the previous or next held consultation
    const ids = [...held.keys()];
    if (!ids.length) return;
    const at = ids.indexOf(selected);
    select(ids[(at + delta + ids.length) % ids.length]);
    $("content").focus();
  }

  function showTyping() {
    const entry = held.get(selected);
    const names = entry ? [...entry.typing.values()] : [];
    $("indicator").textContent = names.length ? names.join(", ") + " is typing…" : "";
  }

  // Keeps a consultation on screen: its own log, joined again after every reconnection.
  function hold(consultation, ack) {
    let entry = held.get(consultation.id);
    if (!entry) {
      const node = el("div", "log");
      node.dataset.consultation = consultation.id;
      node.hidden = true;
      node.setAttribute("role", "log");
      $("logs").appendChild(node);
      const log = new Chat.Log(node, () => me, { note: operatorNote });
      const room = new Chat.Room(socket, consultation.id, log, {
        onJoined: (joined) => update(joined.consultation),
        onError: (error) => log.notice("Could not join: " + error.message),
      });
      entry = { room, log, node, consultation, typing: new Map(), unread: 0 };
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
    if (selected === consultation.id) select(consultation.id); else renderMine();
  }

  async function acceptOne(consultationId) {
    const ack = await Chat.call(socket, "acceptConsultation", { consultationId });
    if (!ack.ok) { status("bad", "Could not accept: " + ack.error.message); return; }
    hold(ack.consultation, ack);
    select(consultationId);
    $("content").focus();
  }

  // -- The connection ------------------------------------------------------------------------
  function start() {
    if (socket) { for (const entry of held.values()) { entry.room.close(); entry.node.remove(); } held.clear(); socket.disconnect(); }
    const token = $("token").value.trim();
    me = token ? (Chat.tokenSubject(token) || $("user-id").value) : $("user-id").value.trim();
    $("me").textContent = (token ? "token: " : "") + me;
    socket = Chat.connect({ token, userId: me, name: $("name").value.trim(), role: "operator" }, status);
    socket.on("operatorQueue", (event) => { queue = event.items; renderQueue(); });
    socket.on("newSupportRequest", (event) => {
      status("connected", "New request from " + event.userId);
      chime();
    });
    socket.on("consultationUpdated", (event) => {
      if (!held.has(event.consultationId)) return;
      const changes = { id: event.consultationId, mode: event.mode, operator: event.operator || null };
      if (event.ownerId) changes.ownerId = event.ownerId;
      update(changes);
    });
    for (const name of ["userMessage", "aiMessage"]) {
      socket.on(name, (message) => { // unread: what others wrote where I am not looking
        const entry = held.get(message.consultationId);
        if (!entry || message.consultationId === selected || message.userId === me) return;
        entry.unread += 1;
        renderMine();
      });
    }
    socket.on("typing", (event) => {
      const entry = held.get(event.consultationId);
      if (!entry || event.userId === me) return;
      if (event.isTyping) entry.typing.set(event.userId, event.displayName || event.userId); else entry.typing.delete(event.userId);
      showTyping();
    });
    socket.on("userOffline", (event) => { const entry = held.get(event.consultationId); if (entry) { entry.typing.delete(event.userId); showTyping(); } });
    socket.on("error", (event) => status("bad", event.code + ": " + event.message));
    socket.on("connect", async () => {
      const ack = await Chat.call(socket, "getOperatorQueue", {});
      if (ack.ok) { queue = ack.items; renderQueue(); } else status("bad", ack.error.message);
      const replies = await Chat.call(socket, "getCannedReplies", {});
      canned = replies.ok ? replies.replies : [];
    });
    // What I held before the reload: join again (mine, or closed: "recent"); one selected.
    const before = JSON.parse(localStorage.getItem("operator.held") || "[]");
    const wasSelected = localStorage.getItem("operator.selected");
    socket.once("connect", async () => {
      for (const id of before) {
        const ack = await Chat.call(socket, "joinConsultation", { consultationId: id });
        const c = ack.ok ? ack.consultation : null;
        if (c && ((c.operator && c.operator.id === me) || c.mode === "closed")) hold(c, ack);
        else if (ack.ok) await Chat.call(socket, "leaveConsultation", { consultationId: id });
      }
      select(held.has(wasSelected) ? wasSelected : [...held.keys()].find((id) => active(held.get(id))) || null);
    });
  }

  // -- Writing -----------------------------------------------------------------------------------
  async function send() {
    const content = $("content").value;
    if (!selected || !content.trim()) return;
    $("content").value = "";
    hideCanned();
    const ack = await Chat.call(socket, "sendMessage", { consultationId: selected, content, clientMessageId: crypto.randomUUID() });
    if (ack.ok) { held.get(selected).log.add(ack.message); Chat.call(socket, "typing", { consultationId: selected, isTyping: false }); }
    else { $("content").value = content; held.get(selected).log.notice("Not sent: " + ack.error.message); }
  }

  // Canned replies: "/" then letters of a shortcut; Tab or Enter inserts the chosen one.
  let choices = [], choice = 0;
  function showCanned() {
    const match = $("content").value.match(/^\/([\w-]*)$/);
    choices = match ? canned.filter((c) => c.shortcut.startsWith(match[1].toLowerCase())) : [];
    const list = $("canned");
    list.textContent = "";
    list.hidden = !choices.length;
    choice = Math.min(choice, Math.max(0, choices.length - 1));
    choices.forEach((c, i) => {
      const item = el("li", i === choice ? "chosen" : "");
      item.setAttribute("role", "option");
      item.setAttribute("aria-selected", String(i === choice));
      item.append(el("strong", "", "/" + c.shortcut), " " + c.text);
      item.onmousedown = (e) => { e.preventDefault(); insert(i); };
      list.appendChild(item);
    });
  }
  function hideCanned() { choices = []; $("canned").hidden = true; }
  function insert(i) {
    $("content").value = choices[i].text;
    hideCanned();
    $("content").focus();
  }

  let typingSent = 0;
  $("composer").onsubmit = (e) => { e.preventDefault(); send(); };
  $("content").onkeydown = (e) => {
    if (choices.length && (e.key === "ArrowDown" || e.key === "ArrowUp") && !e.altKey) {
      e.preventDefault();
      choice = (choice + (e.key === "ArrowDown" ? 1 : choices.length - 1)) % choices.length;
      showCanned();
    } else if (choices.length && (e.key === "Tab" || e.key === "Enter")) {
      e.preventDefault();
      insert(choice);
    } else if (e.key === "Enter" && !e.shiftKey) {
      e.preventDefault();
      send();
    }
  };
  $("content").oninput = () => {
    showCanned();
    if (!selected || Date.now() - typingSent < 2000) return;
    typingSent = Date.now();
    Chat.call(socket, "typing", { consultationId: selected, isTyping: true });
  };
  document.addEventListener("keydown", (e) => {
    if (e.altKey && (e.key === "ArrowUp" || e.key === "ArrowDown")) { e.preventDefault(); step(e.key === "ArrowUp" ? -1 : 1); }
    else if (e.key === "Escape") {
      if (!$("canned").hidden) hideCanned();
      else if (!$("close-dialog").hidden) $("close-dialog").hidden = true;
      else if (selected) { select(null); } // leave the conversation (it stays in the lists)
    }
  });

  $("release").onclick = async () => {
    const ack = await Chat.call(socket, "releaseConsultation", { consultationId: selected });
    if (ack.ok) update(ack.consultation); else status("bad", ack.error.message);
  };
  $("close").onclick = () => { $("close-dialog").hidden = false; $("close-confirm").focus(); };
  $("close-cancel").onclick = () => { $("close-dialog").hidden = true; $("close").focus(); };
  $("close-confirm").onclick = async () => {
    $("close-dialog").hidden = true;
    const ack = await Chat.call(socket, "closeConsultation", { consultationId: selected });
    if (ack.ok) update(ack.consultation); else status("bad", ack.error.message);
  };
  $("sound").onchange = () => { localStorage.setItem("operator.sound", $("sound").checked ? "on" : ""); if ($("sound").checked) chime(); };
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
    if (!token) { body.textContent = ""; body.appendChild(el("div", "empty", "Insights need a token (JWT mode).")); return; }
    const since = new Date(Date.now() - 7 * 24 * 3600 * 1000).toISOString();
    let stats;
    try {
      const response = await fetch("/api/stats?from=" + encodeURIComponent(since), { headers: { Authorization: "Bearer " + token } });
      stats = await response.json();
    } catch (e) { stats = { ok: false, error: { message: String(e) } }; }
    body.textContent = "";
    if (!stats.ok) { body.appendChild(el("div", "empty", "No insights: " + stats.error.message)); return; }
    const list = (title, items, name) => {
      body.appendChild(el("h3", "", title));
      const ol = el("ol", "top");
      if (!items.length) ol.appendChild(el("li", "sub", "nothing yet"));
      for (const item of items) ol.appendChild(el("li", "", name(item) + " ×" + item.count));
      body.appendChild(ol);
    };
    list("Popular questions", stats.topQuestions, (q) => q.text);
    list("Most cited articles", stats.topSources, (s) => s.title);
    body.appendChild(el("p", "sub unanswered", stats.unanswered + " replies had no source (gaps in the knowledge base)"));
  }
  $("insights").addEventListener("toggle", () => { if ($("insights").open) loadInsights(); });
  setInterval(() => { if ($("insights").open) loadInsights(); }, 60000);

  start();
})();
