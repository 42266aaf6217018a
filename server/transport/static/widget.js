// The website widget: the one script a site adds,
//   <script src="https://chat.example/widget.js" data-widget-key="KEY" async></script>
// It adds a launcher button and opens the chat in a frame served by the chat server (/widget),
// so the page's CSS and scripts cannot touch the conversation. No inline styles or scripts are
// added (styles are set through the CSSOM), so it works under a strict Content-Security-Policy
// that allows this server in script-src and frame-src.
// window.ConsultationWidget: open(), close(), toggle(), setContext({page?, attributes?}),
// identify(userToken) -> Promise.
(function () {
  "use strict";
  if (window.ConsultationWidget) return;
  var script = document.currentScript || document.querySelector("script[data-widget-key]");
  if (!script || !script.getAttribute("data-widget-key")) return;
  var key = script.getAttribute("data-widget-key");
  var server = new URL(script.src, location.href).origin;
  var lang = (script.getAttribute("data-lang") || navigator.language || "en").slice(0, 2).toLowerCase();
  var LABELS = {
    en: { open: "Open chat", close: "Close chat", unread: " unread messages" },
    ru: { open: "Открыть чат", close: "Закрыть чат", unread: " непрочитанных сообщений" },
    zh: { open: "打开聊天", close: "关闭聊天", unread: " 条未读消息" },
  };
  if (!LABELS[lang]) lang = "en";
  var labels = LABELS[lang];
  var SOURCE = "consultation-widget";
  var ACTIVE = SOURCE + ":" + key + ":active"; // this site has a conversation: resume it
  var frame = null, ready = false, isOpen = false, unread = 0, outbox = [], waiting = {}, calls = 0;
  var context = { page: { url: location.href, title: document.title } };

  function style(node, rules) { for (var name in rules) node.style[name] = rules[name]; }

  var launcher = document.createElement("button");
  launcher.type = "button";
  launcher.setAttribute("aria-haspopup", "dialog");
  launcher.setAttribute("aria-expanded", "false");
  launcher.setAttribute("data-consultation-widget", "launcher");
  style(launcher, {
    position: "fixed", right: "20px", bottom: "20px", width: "56px", height: "56px", padding: "0",
    borderRadius: "50%", border: "none", background: "#2f6fed", color: "#fff", cursor: "pointer",
    boxShadow: "0 4px 14px rgba(0,0,0,.25)", zIndex: "2147483000",
  });
  // A speech bubble (an SVG built in the DOM: no font or emoji needed, nothing inline).
  var SVG = "http://www.w3.org/2000/svg";
  var icon = document.createElementNS(SVG, "svg");
  icon.setAttribute("viewBox", "0 0 24 24");
  icon.setAttribute("width", "28");
  icon.setAttribute("height", "28");
  icon.setAttribute("aria-hidden", "true");
  icon.setAttribute("focusable", "false");
  var bubble = document.createElementNS(SVG, "path");
  bubble.setAttribute("fill", "currentColor");
  bubble.setAttribute("d", "M4 3h16a2 2 0 0 1 2 2v11a2 2 0 0 1-2 2H9l-5 4v-4H4a2 2 0 0 1-2-2V5a2 2 0 0 1 2-2zm3 6.5a1.5 1.5 0 1 0 0 .01zm5 0a1.5 1.5 0 1 0 0 .01zm5 0a1.5 1.5 0 1 0 0 .01z");
  icon.appendChild(bubble);
  style(icon, { display: "block", margin: "auto" });
  var badge = document.createElement("span");
  badge.setAttribute("data-consultation-widget", "badge");
  style(badge, {
    position: "absolute", top: "-4px", right: "-4px", minWidth: "20px", height: "20px", padding: "0 5px",
    borderRadius: "10px", background: "#b91c1c", color: "#fff", font: "bold 12px/20px system-ui, sans-serif",
    textAlign: "center", display: "none", boxSizing: "border-box",
  });
  launcher.appendChild(icon);
  launcher.appendChild(badge);
  label();

  function label() {
    launcher.setAttribute("aria-label", (isOpen ? labels.close : labels.open) + (unread && !isOpen ? " (" + unread + labels.unread + ")" : ""));
    badge.textContent = unread > 99 ? "99+" : String(unread);
    badge.style.display = unread && !isOpen ? "block" : "none";
  }

  function layout() {
    if (!frame) return;
    // A phone (also a page without a viewport meta tag, laid out wider than the screen):
    // the chat takes the whole screen.
    var small = Math.min(window.innerWidth, screen.width || window.innerWidth) < 480;
    style(frame, small
      ? { top: "0", left: "0", right: "0", bottom: "0", width: "100%", height: "100%", borderRadius: "0" }
      : { top: "auto", left: "auto", right: "20px", bottom: "88px", width: "370px", height: "min(600px, calc(100vh - 108px))", borderRadius: "14px" });
    launcher.style.display = small && isOpen ? "none" : "block";
  }

  function createFrame() {
    if (frame) return;
    frame = document.createElement("iframe");
    frame.title = "Chat";
    frame.setAttribute("data-consultation-widget", "frame");
    frame.src = server + "/widget?key=" + encodeURIComponent(key) + "&lang=" + lang + "&host=" + encodeURIComponent(location.origin);
    style(frame, { position: "fixed", border: "none", zIndex: "2147483001", background: "#fff", boxShadow: "0 8px 30px rgba(0,0,0,.25)", display: "none" });
    layout();
    document.body.appendChild(frame);
  }

  function post(message) {
    message.source = SOURCE + "-host";
    if (ready && frame) frame.contentWindow.postMessage(message, server);
    else outbox.push(message);
  }

  function open() {
    createFrame();
    isOpen = true;
    unread = 0;
    frame.style.display = "block";
    launcher.setAttribute("aria-expanded", "true");
    layout();
    label();
    post({ type: "open" });
    frame.focus();
  }

  function close(fromFrame) {
    if (!frame || !isOpen) return;
    isOpen = false;
    frame.style.display = "none";
    launcher.setAttribute("aria-expanded", "false");
    layout();
    label();
    if (!fromFrame) post({ type: "close" });
    launcher.focus();
  }

  function setContext(more) {
    more = more || {};
    context = { page: more.page || { url: location.href, title: document.title } };
    if (more.attributes) context.attributes = more.attributes;
    post({ type: "context", context: context });
  }

  function identify(userToken) {
    createFrame();
    var id = ++calls;
    return new Promise(function (resolve, reject) {
      waiting[id] = { resolve: resolve, reject: reject };
      post({ type: "identify", id: id, userToken: userToken });
    });
  }

  window.addEventListener("message", function (event) {
    if (!frame || event.origin !== server || event.source !== frame.contentWindow) return;
    var message = event.data || {};
    if (message.source !== SOURCE) return;
    if (message.type === "ready") {
      ready = true;
      frame.contentWindow.postMessage({ source: SOURCE + "-host", type: "context", context: context }, server);
      if (isOpen) outbox.push({ source: SOURCE + "-host", type: "open" });
      outbox.splice(0).forEach(function (m) { frame.contentWindow.postMessage(m, server); });
    } else if (message.type === "unread") {
      unread = isOpen ? 0 : message.count;
      label();
    } else if (message.type === "close") {
      close(true);
    } else if (message.type === "active") {
      try { localStorage.setItem(ACTIVE, "1"); } catch (e) { /* storage blocked: no resume */ }
    } else if (message.type === "identified" && waiting[message.id]) {
      var call = waiting[message.id];
      delete waiting[message.id];
      if (message.ok) call.resolve({ userId: message.userId, moved: message.moved });
      else call.reject(new Error(message.error || "identify failed"));
    }
  });

  launcher.addEventListener("click", function () { if (isOpen) close(); else open(); });
  window.addEventListener("resize", layout);

  function mount() {
    document.body.appendChild(launcher);
    var active = false;
    try { active = localStorage.getItem(ACTIVE) === "1"; } catch (e) { /* storage blocked */ }
    if (active) createFrame(); // resume: replies and the unread count while it is closed
  }
  if (document.body) mount(); else document.addEventListener("DOMContentLoaded", mount);

  window.ConsultationWidget = {
    open: open,
    close: function () { close(false); },
    toggle: function () { if (isOpen) close(false); else open(); },
    setContext: setContext,
    identify: identify,
  };
})();
