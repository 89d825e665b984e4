/* Jack web chat: a minimal interim client for the demo page (protocol v1).
 * The full widget (Shadow DOM, accessibility, rich rendering, offline queue) replaces this
 * file; see widget/README in the widget issue. Renders text with textContent only. */
(function () {
  'use strict';
  var cfg = window.JackChatConfig || {};
  var hotelId = cfg.hotelId || 'demo_hotel';
  var wsUrl = cfg.wsUrl || ((location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + '/ws/chat');
  var store = window.localStorage;
  var key = function (k) { return 'jack_' + hotelId + '_' + k; };
  var shown = {};
  var lastSeq = Number(store.getItem(key('last_seq')) || 0);
  var ws, box, list, input, pending = {};

  function el(tag, text, cls) { var e = document.createElement(tag); if (text) e.textContent = text; if (cls) e.className = cls; return e; }

  function ui() {
    box = el('div'); box.setAttribute('style', 'position:fixed;right:20px;bottom:20px;width:340px;height:480px;background:#fff;border-radius:12px;box-shadow:0 8px 30px rgba(0,0,0,.2);display:flex;flex-direction:column;font:14px sans-serif;z-index:999999');
    var head = el('div', 'Jack · your butler'); head.setAttribute('style', 'background:#1a365d;color:#fff;padding:12px;border-radius:12px 12px 0 0;font-weight:bold');
    list = el('div'); list.setAttribute('role', 'log'); list.setAttribute('aria-live', 'polite'); list.setAttribute('style', 'flex:1;overflow:auto;padding:10px');
    var form = el('form'); form.setAttribute('style', 'display:flex;padding:8px;border-top:1px solid #e2e8f0');
    input = el('input'); input.setAttribute('aria-label', 'Message'); input.setAttribute('placeholder', 'Type your message...'); input.setAttribute('style', 'flex:1;padding:8px');
    var send = el('button', 'Send'); send.type = 'submit';
    form.appendChild(input); form.appendChild(send);
    form.addEventListener('submit', function (e) { e.preventDefault(); if (input.value.trim()) { sendFrame('message', { content: input.value }); input.value = ''; } });
    box.appendChild(head); box.appendChild(list); box.appendChild(form);
    document.body.appendChild(box);
  }

  function bubble(text, who) {
    var b = el('div', text); b.setAttribute('style', 'margin:6px 0;padding:8px 10px;border-radius:10px;max-width:85%;white-space:pre-wrap;' + (who === 'guest' ? 'margin-left:auto;background:#1a365d;color:#fff' : 'background:#f1f5f9'));
    list.appendChild(b); list.scrollTop = list.scrollHeight; return b;
  }

  function action(label, onClick) { var b = el('button', label); b.setAttribute('style', 'margin:2px;padding:4px 8px;border:1px solid #1a365d;border-radius:14px;background:#fff;color:#1a365d;cursor:pointer'); b.addEventListener('click', onClick); list.appendChild(b); }

  function buttonOf(m, b) {
    if (b.type === 'url' && /^https?:\/\//i.test(b.url || '')) action(b.label, function () { window.open(b.url, '_blank', 'noopener,noreferrer'); });
    else if (b.type === 'postback') action(b.label, function () { sendFrame('postback', { payload: b.payload, label: b.label, messageId: m.messageId }); });
  }

  function render(m) {
    if (shown[m.messageId]) return;
    shown[m.messageId] = true;
    if (m.seq > lastSeq) { lastSeq = m.seq; store.setItem(key('last_seq'), String(lastSeq)); }
    if (m.role === 'guest' && m.clientMessageId && pending[m.clientMessageId]) return;
    bubble(m.content, m.role);
    (m.quickReplies || []).forEach(function (q) { action(q.label, function () { sendFrame('postback', { payload: q.payload, label: q.label, messageId: m.messageId }); }); });
    (m.buttons || []).forEach(function (b) { buttonOf(m, b); });
    (m.cards || []).forEach(function (c) { bubble(c.title + (c.subtitle ? ' — ' + c.subtitle : ''), 'assistant'); (c.buttons || []).forEach(function (b) { buttonOf(m, b); }); });
  }

  function sendFrame(type, fields) {
    var id = 'c_' + Date.now().toString(36) + Math.random().toString(36).slice(2, 8);
    var frame = Object.assign({ type: type, clientMessageId: id }, fields);
    pending[id] = { frame: frame, el: bubble(fields.label || fields.content, 'guest') };
    pending[id].el.style.opacity = '0.6';
    if (ws && ws.readyState === 1) ws.send(JSON.stringify(frame));
  }

  function connect() {
    ws = new WebSocket(wsUrl + '?hotelId=' + encodeURIComponent(hotelId));
    ws.onmessage = function (ev) {
      var f = JSON.parse(ev.data);
      if (f.type === 'connected') {
        ws.send(JSON.stringify({ type: 'identify', visitorId: store.getItem(key('visitor')) || undefined, visitorToken: store.getItem(key('token')) || undefined, resumeConversation: true, lastSeq: lastSeq || undefined }));
      } else if (f.type === 'identified') {
        store.setItem(key('visitor'), f.visitorId); store.setItem(key('token'), f.visitorToken);
        Object.keys(pending).forEach(function (id) { ws.send(JSON.stringify(pending[id].frame)); });
      } else if (f.type === 'history') { f.messages.forEach(render); }
      else if (f.type === 'message') { render(f); }
      else if (f.type === 'message_ack') { var p = pending[f.clientMessageId]; if (p) { p.el.style.opacity = '1'; shown[f.messageId] = true; delete pending[f.clientMessageId]; } }
    };
    ws.onclose = function () { setTimeout(connect, 1000 + Math.random() * 2000); };
  }

  function start() { ui(); if (cfg.greeting && !lastSeq) bubble(cfg.greeting, 'assistant'); connect(); }
  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', start); else start();
})();
