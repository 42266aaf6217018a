// The chat inside the website widget's frame (/widget?key=&lang=&host=). Its visitor token
// and consultation id live in this server origin's storage, so a reload or another page of
// the same site resumes the conversation. Talks to the embedding page (widget.js) only by
// postMessage, with that page's origin, checked both ways.
(() => {
  "use strict";
  const { $, el } = Chat;
  const params = new URLSearchParams(location.search);
  const key = params.get("key") || "";
  const host = params.get("host") || "";
  const SOURCE = "consultation-widget";

  const STRINGS = {
    en: {
      title: "Chat with us", close: "Close chat", send: "Send", stop: "Stop", human: "Talk to a human",
      placeholder: "Type your question…", messageLabel: "Your message",
      you: "You", assistant: "Assistant", support: "support",
      greeting: "Hello! Ask me anything — and if you would rather talk to a person, press “Talk to a human”.",
      humanQuestion: "What do you need help with? (optional)", humanConfirm: "Ask for a person", cancel: "Cancel",
      waiting: "Waiting for a person from our team", queue: " — you are number {n} in the queue.",
      withOperator: "{name} from our team is with you.", closed: "This conversation is closed.",
      thinking: "The assistant is writing…", typing: "{names} is typing…",
      ratingQuestion: "How was this conversation?", ratingComment: "Anything to add? (optional)",
      ratingSend: "Send rating", thanks: "Thank you for your rating!", newConversation: "New conversation",
      star: "{n} of 5", online: "Online", reconnecting: "Reconnecting…", offline: "Offline",
      notSent: "Not sent: ", unavailable: "The chat is unavailable right now. Retrying…", sources: "Sources",
    },
    ru: {
      title: "Напишите нам", close: "Закрыть чат", send: "Отправить", stop: "Стоп", human: "Позвать человека",
      placeholder: "Ваш вопрос…", messageLabel: "Ваше сообщение",
      you: "Вы", assistant: "Ассистент", support: "поддержка",
      greeting: "Здравствуйте! Задайте вопрос, а если хотите поговорить с человеком, нажмите «Позвать человека».",
      humanQuestion: "С чем вам помочь? (необязательно)", humanConfirm: "Позвать человека", cancel: "Отмена",
      waiting: "Ждём сотрудника", queue: " — вы {n}-й в очереди.",
      withOperator: "С вами {name} из нашей команды.", closed: "Разговор завершён.",
      thinking: "Ассистент пишет…", typing: "{names} печатает…",
      ratingQuestion: "Как прошёл разговор?", ratingComment: "Хотите что-то добавить? (необязательно)",
      ratingSend: "Оценить", thanks: "Спасибо за оценку!", newConversation: "Новый разговор",
      star: "{n} из 5", online: "В сети", reconnecting: "Переподключение…", offline: "Нет связи",
      notSent: "Не отправлено: ", unavailable: "Чат сейчас недоступен. Пробуем снова…", sources: "Источники",
      notes: {
        operator_requested: "Вы попросили позвать сотрудника. Он скоро подключится.",
        operator_joined: "{name} (поддержка) подключился к разговору.",
        released: "Сотрудник передал разговор обратно ассистенту.",
        closed: "Разговор завершён.",
        timed_out: "Сейчас никто из сотрудников не свободен. Ассистент продолжит помогать; позвать человека можно позже.",
        requeued: "{name} (поддержка) отключился. Вы снова первый в очереди; скоро подключится другой сотрудник.",
      },
    },
    zh: {
      title: "联系我们", close: "关闭聊天", send: "发送", stop: "停止", human: "转人工",
      placeholder: "请输入您的问题…", messageLabel: "您的消息",
      you: "您", assistant: "助手", support: "客服",
      greeting: "您好！请随时提问；如需人工服务，请点击“转人工”。",
      humanQuestion: "需要什么帮助？（可选）", humanConfirm: "转人工", cancel: "取消",
      waiting: "正在等待客服", queue: "——您排在第 {n} 位。",
      withOperator: "客服 {name} 正在为您服务。", closed: "对话已结束。",
      thinking: "助手正在输入…", typing: "{names} 正在输入…",
      ratingQuestion: "您对本次对话满意吗？", ratingComment: "还有什么想说的吗？（可选）",
      ratingSend: "提交评价", thanks: "感谢您的评价！", newConversation: "新对话",
      star: "{n} 星（共 5 星）", online: "在线", reconnecting: "正在重新连接…", offline: "离线",
      notSent: "未发送：", unavailable: "聊天暂时不可用，正在重试…", sources: "来源",
      notes: {
        operator_requested: "您已请求人工客服，客服很快会加入。",
        operator_joined: "客服 {name} 已加入对话。",
        released: "客服已将对话交回给助手。",
        closed: "对话已结束。",
        timed_out: "目前没有空闲的客服。助手会继续为您服务，您稍后可以再次请求人工。",
        requeued: "客服 {name} 已断开。您已回到队列最前面，其他客服很快会加入。",
      },
    },
  };
  const lang = STRINGS[(params.get("lang") || navigator.language || "en").slice(0, 2).toLowerCase()] ? (params.get("lang") || navigator.language).slice(0, 2).toLowerCase() : "en";
  const t = (name, values = {}) => (STRINGS[lang][name] || STRINGS.en[name]).replace(/\{(\w+)\}/g, (_, k) => values[k]);
  document.documentElement.lang = lang;
  document.querySelectorAll("[data-text]").forEach((node) => { node.textContent = t(node.dataset.text); });
  document.querySelectorAll("[data-placeholder]").forEach((node) => { node.placeholder = t(node.dataset.placeholder); });
  document.querySelectorAll("[data-label]").forEach((node) => node.setAttribute("aria-label", t(node.dataset.label)));

  // Storage of this origin (partitioned per embedding site by the browser); in memory when blocked.
  const memory = {};
  const store = {
    get: (name) => { try { return localStorage.getItem("widget:" + key + ":" + name); } catch (e) { return memory[name] || null; } },
    set: (name, value) => { try { localStorage.setItem("widget:" + key + ":" + name, value); } catch (e) { memory[name] = value; } },
    drop: (name) => { try { localStorage.removeItem("widget:" + key + ":" + name); } catch (e) { delete memory[name]; } },
  };
  const newId = () => "w-" + Array.from(crypto.getRandomValues(new Uint8Array(9)), (b) => b.toString(16).padStart(2, "0")).join("");
  const tokenExpiry = (token) => { // ms since the epoch, from the token's exp (display only)
    try { return JSON.parse(atob(token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/"))).exp * 1000; } catch (e) { return 0; }
  };

  let consultationId = store.get("consultation") || newId();
  let socket = null, room = null, me = null, mode = "ai", streaming = false, isOpen = false, unread = 0;
  let context = null, score = 0, rated = false, greeted = false;
  // The embedding page sends its context as soon as it hears "ready": the first join waits
  // for it (briefly), so that the operator sees where the person is from the start.
  let contextArrived = () => {};
  const contextReady = window.parent === window ? Promise.resolve()
    : new Promise((resolve) => { contextArrived = resolve; setTimeout(resolve, 1000); });
  const others = new Map(); // who is typing
  // System notes in the visitor's language (the stored text is English).
  const note = (message) => {
    const text = STRINGS[lang].notes && STRINGS[lang].notes[message.note];
    return text ? text.replace("{name}", message.authorName || "") : null;
  };
  const log = new Chat.Log($("log"), () => me, { you: t("you"), assistant: t("assistant"), support: t("support"), sources: t("sources"), note });

  function tellHost(type, data = {}) {
    if (window.parent !== window && host) window.parent.postMessage(Object.assign({ source: SOURCE, type }, data), host);
  }

  function setStatus(kind) {
    const text = kind === "connected" ? t("online") : kind === "warn" ? t("reconnecting") : t("offline");
    $("status").className = "pill " + (kind === "connected" ? "ok" : kind);
    $("status").textContent = text;
  }

  // -- the visitor token: kept while it is valid, issued by the server otherwise -------------
  const WEEK = 7 * 24 * 3600 * 1000;
  const isVisitorToken = (token) => {
    try { return JSON.parse(atob(token.split(".")[0].replace(/-/g, "+").replace(/_/g, "/"))).kid === "visitor"; } catch (e) { return false; }
  };

  async function token() {
    const saved = store.get("token");
    const left = saved ? tokenExpiry(saved) - Date.now() : 0;
    if (saved && left > 60000 && left < WEEK && isVisitorToken(saved)) { // renew: same visitor
      try {
        const response = await fetch("/api/visitors/refresh", { method: "POST", headers: { Authorization: "Bearer " + saved } });
        const body = await response.json();
        if (body.ok) { store.set("token", body.token); return body.token; }
      } catch (e) { /* the old one still works for now */ }
    }
    if (saved && left > 60000) return saved;
    store.drop("token");
    const response = await fetch("/api/visitors", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ widgetKey: key }),
    });
    const body = await response.json();
    if (!body.ok) throw new Error(body.error.message);
    store.set("token", body.token);
    return body.token;
  }

  async function start() {
    if (!Chat.clientLoaded()) return;
    await contextReady;
    let current;
    try {
      current = await token();
    } catch (e) {
      setStatus("bad");
      log.notice(t("unavailable"));
      setTimeout(start, 10000);
      return;
    }
    me = Chat.tokenSubject(current);
    socket = Chat.connect({ token: current }, setStatus);
    socket.on("connect_error", (err) => {
      const code = err.data && err.data.code;
      if (code === "unauthorized" || code === "token_expired") { // a token the server no longer takes
        store.drop("token");
        setTimeout(restart, 1000);
      }
    });
    socket.on("aiThinking", (e) => { if (e.consultationId !== consultationId) return; streaming = e.status === "processing"; $("stop").hidden = !streaming; indicator(); });
    socket.on("consultationUpdated", (u) => {
      if (u.consultationId !== consultationId) return;
      if (u.ownerId && u.ownerId !== me) { restart(); return; } // signed in (maybe in another tab)
      setMode(u.mode, u.operator, u.queuePosition);
    });
    socket.on("supportPending", (p) => p.consultationId === consultationId && setMode("waiting", null, p.queuePosition));
    socket.on("operatorJoined", (j) => j.consultationId === consultationId && setMode("operator", j.operator));
    socket.on("typing", (e) => {
      if (e.consultationId !== consultationId || e.userId === me) return;
      if (e.isTyping) others.set(e.userId, e.name || e.userId); else others.delete(e.userId);
      indicator();
    });
    for (const event of ["userMessage", "aiMessage"]) {
      socket.on(event, (m) => {
        if (m.consultationId !== consultationId || m.userId === me && m.role === "user") return;
        if (!isOpen) { unread += 1; tellHost("unread", { count: unread }); }
      });
    }
    // A conversation begins with its first message: opening the chat creates nothing.
    if (store.get("consultation")) joinRoom(); else greet();
  }

  function greet() {
    if (!greeted) { greeted = true; log.notice(t("greeting")); }
  }

  function restart() {
    if (room) room.close();
    if (socket) { socket.removeAllListeners(); socket.disconnect(); }
    socket = room = null;
    start();
  }

  function joinRoom() {
    room = new Chat.Room(socket, consultationId, log, {
      extra: () => (context ? { context } : {}),
      onJoined: (ack) => {
        store.set("consultation", consultationId);
        const c = ack.consultation;
        setMode(c.mode, c.operator);
        streaming = Boolean(ack.streaming); $("stop").hidden = !streaming; indicator();
        if (!log.byId.size) greet();
        tellHost("active");
      },
      onError: (error) => {
        if (error.code === "forbidden") { newConversation(); return; } // no longer this visitor's
        log.notice(error.message);
      },
    });
    return socket.connected ? room.join() : Promise.resolve({ ok: false });
  }

  function newConversation() {
    consultationId = newId();
    store.drop("consultation");
    if (room) room.close();
    room = null;
    log.clear();
    greeted = false;
    rated = false;
    score = 0;
    setMode("ai");
    $("rating").hidden = true;
    greet();
  }

  // -- what the visitor sees of the consultation's state ---------------------------------------
  function setMode(next, operator, position) {
    const was = mode;
    mode = next;
    const banner = next === "waiting" ? t("waiting") + (position ? t("queue", { n: position }) : "…")
      : next === "operator" ? t("withOperator", { name: operator ? operator.name : "" })
      : next === "closed" ? t("closed") : "";
    $("banner").hidden = !banner;
    $("banner").textContent = banner;
    $("title").textContent = next === "operator" && operator ? operator.name : t("title");
    $("human").hidden = next !== "ai";
    $("send").disabled = $("content").disabled = next === "closed";
    if (next === "closed" || (was === "operator" && next === "ai")) showRating();
  }

  function indicator() {
    const typing = [...others.values()];
    $("indicator").textContent = streaming ? t("thinking") : typing.length ? t("typing", { names: typing.join(", ") }) : "";
  }

  function showRating() {
    if (rated) return;
    $("rating").hidden = false;
    $("rating-question").textContent = t("ratingQuestion");
    $("rating-comment").hidden = $("rating-send").hidden = false;
    $("stars").hidden = false;
  }

  const stars = [1, 2, 3, 4, 5].map((n) => {
    const star = el("button", "", "★");
    star.type = "button";
    star.setAttribute("role", "radio");
    star.setAttribute("aria-checked", "false");
    star.setAttribute("aria-label", t("star", { n }));
    star.onclick = () => pick(n);
    star.onkeydown = (e) => {
      if (e.key === "ArrowRight" || e.key === "ArrowUp") { e.preventDefault(); pick(Math.min(5, n + 1)); stars[Math.min(4, n)].focus(); }
      if (e.key === "ArrowLeft" || e.key === "ArrowDown") { e.preventDefault(); pick(Math.max(1, n - 1)); stars[Math.max(0, n - 2)].focus(); }
    };
    $("stars").appendChild(star);
    return star;
  });
  function pick(n) {
    score = n;
    stars.forEach((star, i) => { star.setAttribute("aria-checked", String(i + 1 === n)); star.textContent = i < n ? "★" : "☆"; star.tabIndex = i + 1 === n ? 0 : -1; });
    $("rating-send").disabled = false;
  }

  $("rating").onsubmit = async (e) => {
    e.preventDefault();
    if (!score || !socket) return;
    const comment = $("rating-comment").value.trim() || undefined;
    const ack = await Chat.call(socket, "rateConsultation", { consultationId, score, comment });
    if (!ack.ok) { log.notice(ack.error.message); return; }
    rated = true;
    $("rating-question").textContent = t("thanks");
    $("stars").hidden = $("rating-comment").hidden = $("rating-send").hidden = true;
  };
  $("new-conversation").onclick = () => newConversation();

  // -- sending ----------------------------------------------------------------------------------
  async function send() {
    const content = $("content").value;
    if (!socket || !content.trim() || mode === "closed") return;
    $("content").value = "";
    if (!room && !(await joinRoom()).ok) { // the conversation could not begin: keep the text
      if (room) room.close();
      room = null;
      $("content").value = content;
      return;
    }
    const payload = { consultationId, content, clientMessageId: newId() };
    if (context) payload.context = context;
    const ack = await Chat.call(socket, "sendMessage", payload);
    if (ack.ok) { log.add(ack.message); tellHost("active"); }
    else { $("content").value = content; log.notice(t("notSent") + ack.error.message); }
  }
  $("composer").onsubmit = (e) => { e.preventDefault(); send(); };
  $("content").onkeydown = (e) => { if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); send(); } };
  let typingSent = 0;
  $("content").oninput = () => {
    if (!socket || Date.now() - typingSent < 2000) return;
    typingSent = Date.now();
    Chat.call(socket, "typing", { consultationId, isTyping: true });
  };
  $("stop").onclick = () => socket && Chat.call(socket, "stopGeneration", { consultationId });

  Chat.humanDialog(async (reason) => {
    const ack = await Chat.call(socket, "requestOperator", { consultationId, reason });
    if (ack.ok) setMode("waiting", null, ack.queuePosition); else log.notice(ack.error.message);
    $("content").focus();
  });

  function hide() { isOpen = false; tellHost("close"); } // the page hides the frame
  $("close").onclick = hide;
  document.addEventListener("keydown", (e) => { if (e.key === "Escape" && !e.defaultPrevented) hide(); });

  // -- the embedding page -----------------------------------------------------------------------
  // The page context within the server's limits (2 kB as JSON, 20 attributes of strings,
  // numbers or booleans): a long URL or a generous setContext never stops the chat.
  function fitted(raw) {
    const out = {};
    const page = raw.page;
    if (page && typeof page.url === "string" && page.url) {
      out.page = { url: page.url.slice(0, 2048) };
      if (typeof page.title === "string") out.page.title = page.title.slice(0, 500);
    }
    const attributes = {};
    for (const [name, value] of Object.entries(raw.attributes || {}).slice(0, 20)) {
      if (typeof value === "string") attributes[name.slice(0, 64)] = value.slice(0, 500);
      else if (typeof value === "number" && isFinite(value) || typeof value === "boolean") attributes[name.slice(0, 64)] = value;
    }
    if (Object.keys(attributes).length) out.attributes = attributes;
    const size = () => new TextEncoder().encode(JSON.stringify(out)).length;
    if (size() > 2048) delete out.attributes;
    if (size() > 2048 && out.page) { delete out.page.title; out.page.url = out.page.url.slice(0, 1500); }
    return out;
  }

  async function identify(id, userToken) {
    const visitorToken = store.get("token");
    const subject = Chat.tokenSubject(userToken || "");
    if (!userToken || !subject) { tellHost("identified", { id, ok: false, error: "not a token" }); return; }
    if (visitorToken && Chat.tokenSubject(visitorToken) === subject) { // already this user: a fresher token
      store.set("token", userToken);
      if (socket) await Chat.call(socket, "refreshToken", { token: userToken });
      tellHost("identified", { id, ok: true, userId: subject, moved: [] });
      return;
    }
    let body = { ok: false, error: { message: "no visitor token" } };
    if (visitorToken) {
      const response = await fetch("/api/visitors/identify", {
        method: "POST",
        headers: { "Content-Type": "application/json", Authorization: "Bearer " + visitorToken },
        body: JSON.stringify({ userToken }),
      });
      body = await response.json();
    }
    if (!body.ok && visitorToken) { tellHost("identified", { id, ok: false, error: body.error.message }); return; }
    store.set("token", userToken); // the user's from now on (also when there was no visitor yet)
    tellHost("identified", { id, ok: true, userId: subject, moved: body.moved || [] });
    restart();
  }

  window.addEventListener("message", (event) => {
    if (event.source !== window.parent || event.origin !== host) return;
    const message = event.data || {};
    if (message.source !== SOURCE + "-host") return;
    if (message.type === "open") {
      isOpen = true;
      unread = 0;
      tellHost("unread", { count: 0 });
      $("content").focus();
    } else if (message.type === "close") {
      isOpen = false;
    } else if (message.type === "context" && message.context && typeof message.context === "object") {
      context = fitted(message.context);
      contextArrived();
    } else if (message.type === "identify") {
      identify(message.id, message.userToken);
    }
  });

  tellHost("ready");
  if (window.parent === window) isOpen = true; // opened on its own (a link): it is visible
  start();
})();
