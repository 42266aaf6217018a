(() => {
  const { $, status } = Chat;
  if (!Chat.clientLoaded()) return;

  // Kept across reloads: the consultation and who I am (dev auth), so the history comes back.
  const stored = (key, make) => localStorage.getItem(key) || (localStorage.setItem(key, make()), localStorage.getItem(key));
  const newId = () => "c-" + Math.random().toString(36).slice(2, 10);
  let consultationId = stored("consultation.id", newId);
  const userId = stored("consultation.userId", () => "guest-" + Math.random().toString(36).slice(2, 8));
  $("consultation").value = consultationId;
  $("name").value = localStorage.getItem("consultation.name") || "";
  $("token").value = localStorage.getItem("consultation.token") || "";

  let socket = null, room = null, me = userId, streaming = false, typingSent = 0; // me: who I am
  let greeted = false, rated = false, mode = "ai", score = 0;
  const log = new Chat.Log($("log"), () => me);
  const others = new Map(); // who is typing

  function setMode(next, operator, position) {
    const was = mode;
    mode = next;
    // The end of a conversation with a person, or of the consultation: ask for a rating.
    if (!rated && (next === "closed" || (was === "operator" && next === "ai"))) $("rating").hidden = false;
    showMode(next, operator, position);
  }

  function showMode(mode, operator, position) {
    const labels = { ai: "assistant", waiting: "waiting for a human", operator: "with " + (operator ? operator.name : "an operator"), closed: "closed" };
    $("mode").textContent = labels[mode] || mode;
    $("mode").className = "pill " + (mode === "operator" ? "ok" : mode === "waiting" ? "warn" : mode === "closed" ? "bad" : "");
    const banner = mode === "waiting" ? "Waiting for a human operator" + (position ? " — you are number " + position + " in the queue." : "…")
      : mode === "operator" ? (operator ? operator.name : "An operator") + " from support is with you." : mode === "closed" ? "This consultation is closed." : "";
    $("banner").hidden = !banner;
    $("banner").textContent = banner;
    $("human").disabled = mode !== "ai";
    $("send").disabled = $("content").disabled = mode === "closed";
  }

  function showIndicator() {
    const typing = [...others.values()];
    $("indicator").textContent = streaming ? "The assistant is writing…" : typing.length ? typing.join(", ") + " is typing…" : "";
  }

  function start() {
    if (room) room.close();
    if (socket) socket.disconnect();
    log.clear();
    greeted = rated = false;
    mode = "ai";
    $("rating").hidden = true;
    $("consultation-label").textContent = consultationId;
    const token = $("token").value.trim();
    me = token ? Chat.tokenSubject(token) || userId : userId;
    socket = Chat.connect({ token, userId, name: $("name").value.trim() || undefined }, status);
    room = new Chat.Room(socket, consultationId, log, {
      onJoined: (ack) => {
        const c = ack.consultation;
        if (c.rating) rated = true;
        setMode(c.mode, c.operator);
        streaming = Boolean(ack.streaming); $("stop").hidden = !streaming; showIndicator();
        if (!log.byId.size && !greeted) { // an empty consultation opens with the tenant's greeting
          greeted = true;
          log.notice(ack.greeting || "Hello! Ask your question below: the assistant answers right away, and a person from our team can join.");
        }
      },
      onError: (error) => log.notice("Could not join: " + error.message),
    });
    socket.on("aiThinking", (e) => { if (e.consultationId !== consultationId) return; streaming = e.status === "processing"; $("stop").hidden = !streaming; showIndicator(); });
    socket.on("consultationUpdated", (u) => u.consultationId === consultationId && setMode(u.mode, u.operator, u.queuePosition));
    socket.on("supportPending", (p) => p.consultationId === consultationId && setMode("waiting", null, p.queuePosition));
    socket.on("operatorJoined", (j) => j.consultationId === consultationId && setMode("operator", j.operator));
    socket.on("typing", (t) => {
      if (t.consultationId !== consultationId) return;
      const name = t.displayName || t.userId;
      if (t.isTyping) others.set(t.userId, t.role === "user" ? name : name + " (support)"); else others.delete(t.userId);
      showIndicator();
    });
    socket.on("error", (e) => log.notice("Error (" + e.code + "): " + e.message));
  }

  async function send() {
    const content = $("content").value;
    if (!socket || !content.trim()) return;
    $("content").value = "";
    const ack = await Chat.call(socket, "sendMessage", { consultationId, content, clientMessageId: crypto.randomUUID() });
    if (ack.ok) { me = ack.message.userId; log.add(ack.message); Chat.call(socket, "typing", { consultationId, isTyping: false }); }
    else { $("content").value = content; log.notice("Not sent: " + ack.error.message); }
  }

  $("composer").onsubmit = (e) => { e.preventDefault(); send(); };
  $("content").onkeydown = (e) => { if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); send(); } };
  $("content").oninput = () => { // "typing" at most every 2 s while typing
    if (!socket || Date.now() - typingSent < 2000) return;
    typingSent = Date.now();
    Chat.call(socket, "typing", { consultationId, isTyping: true });
  };
  $("stop").onclick = () => socket && Chat.call(socket, "stopGeneration", { consultationId });
  Chat.humanDialog(async (reason) => {
    const ack = await Chat.call(socket, "requestOperator", { consultationId, reason });
    if (ack.ok) setMode("waiting", null, ack.queuePosition); else log.notice("Could not ask: " + ack.error.message);
  });

  // The rating: 1-5 stars and a comment, stored with the consultation.
  const stars = [1, 2, 3, 4, 5].map((n) => {
    const star = Chat.el("button", "", "☆");
    star.type = "button";
    star.setAttribute("role", "radio");
    star.setAttribute("aria-checked", "false");
    star.setAttribute("aria-label", n + " of 5");
    star.onclick = () => {
      score = n;
      stars.forEach((s, i) => { s.textContent = i < n ? "★" : "☆"; s.setAttribute("aria-checked", String(i + 1 === n)); });
      $("rating-send").disabled = false;
    };
    $("stars").appendChild(star);
    return star;
  });
  $("rating").onsubmit = async (e) => {
    e.preventDefault();
    const comment = $("rating-comment").value.trim() || undefined;
    const ack = await Chat.call(socket, "rateConsultation", { consultationId, score, comment });
    if (!ack.ok) { log.notice("Could not rate: " + ack.error.message); return; }
    rated = true;
    $("rating").hidden = true;
    log.notice("Thank you for your rating.");
  };
  $("new-top").onclick = () => { $("consultation").value = newId(); $("apply").onclick(); };
  $("apply").onclick = () => {
    consultationId = $("consultation").value.trim() || consultationId;
    localStorage.setItem("consultation.id", consultationId);
    localStorage.setItem("consultation.name", $("name").value.trim());
    localStorage.setItem("consultation.token", $("token").value.trim());
    start();
  };
  $("new").onclick = () => { $("consultation").value = newId(); $("apply").onclick(); };
  start();
})();
