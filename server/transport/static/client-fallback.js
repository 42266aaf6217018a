// Loads socket.io-client from its fallback source when the first one did not define `io`
// (an unreachable CDN, a proxy that blocks it). A file rather than an inline script, so the
// pages' Content-Security-Policy needs no 'unsafe-inline'. document.write keeps the order:
// chat.js, next on the page, runs only after the fallback has loaded.
(() => {
  if (window.io) return;
  const source = document.currentScript.dataset;
  const quoted = (value) => '"' + value.replace(/&/g, "&amp;").replace(/"/g, "&quot;") + '"';
  let tag = "<script src=" + quoted(source.src);
  if (source.integrity) tag += " integrity=" + quoted(source.integrity) + ' crossorigin="anonymous"';
  document.write(tag + "><\/script>");
})();
