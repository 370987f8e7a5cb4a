// The Refine terminal's client: an ES module a frontend imports (web/index.html uses it itself).
//
//   import { mountTerminal } from "./aipm-terminal.js";
//   const { session } = await mountTerminal(document.getElementById("term"), {
//     url: "wss://<api>.execute-api.<region>.amazonaws.com/<stage>",
//     tokenUrl: "/refine-token?task=T-1",          // or token: "...", or tokenProvider: async () => "..."
//     onState: (state, detail) => console.log(state, detail),
//   });
//
// `connect(options)` is the protocol alone, for any terminal object with xterm's shape (write,
// onData, onResize, cols, rows); `mountTerminal(element, options)` makes the xterm.js terminal (the
// packages `@xterm/xterm` and `@xterm/addon-fit`: a bundler resolves them, the page maps them with an
// import map) and connects it. What it does on the wire (see the README, "The terminal page"):
// - open the token's task or branch once, then `resume` by seq after every reconnect, so output is
//   applied once and in order whatever the connection does;
// - a `ping` every `keepaliveSeconds` (API Gateway closes a connection idle for 10 minutes);
// - `no_runner` / `runner_gone`: the session is kept and resumed with backoff (1 s doubling to 30 s)
//   until its runner is back; keystrokes typed meanwhile are held and sent then;
// - with `tokenProvider` or `tokenUrl`, a fresh token before the current one expires (60 s ahead) and
//   on a reconnect after it expired; with a fixed `token`, a refused or expired token is reported
//   once and never retried;
// - input split by UTF-8 bytes so every frame stays under API Gateway's 32 KB, numbered (`seq`) from 1
//   across all of the page's connections under one random `writer` id, so keystrokes typed on a new
//   connection are written after those its old one is still relaying;
// - output written to the terminal in batches: while xterm is still parsing one write, whatever
//   arrives meanwhile is joined and written next, in one call (a burst of output costs a few large
//   writes, not one per frame; a keystroke's echo is still written at once);
// - `watch: true`: a read-only view of a running task's output from the start of its run (the
//   "Generate Code & PR" button's progress): waits while the task is not running yet (`no_session`),
//   follows a run given back into its next attempt, and ends at the task's final `task` frame
//   (`onTask(frame)`: status complete with commitSha, or failed with error and errorKind).

export const MAX_FRAME_BYTES = 32 * 1024;
const FRAME_BUDGET = MAX_FRAME_BYTES - 1024; // room for the frame's other fields
const HELD_INPUT_BYTES = 1024 * 1024; // keystrokes kept while the runner is away
const RESUME_FIRST_MS = 1000;
const RESUME_MAX_MS = 30000;
const RENEW_AHEAD_S = 60;
const RECONNECT_TRIES = 4;
const FATAL = ["not_granted", "bad_target", "busy", "no_session", "forbidden"];
const WATCH_RETRY_MS = 2500; // a watched task not running yet is opened again this often (the relay
// budgets opens: 5 in 10 s on a connection)
const FINAL_STATUSES = ["complete", "failed"];

/** The claims of a JWT, read without checking it (the relay checks it); {} when unreadable. */
export function tokenClaims(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const bytes = Uint8Array.from(atob(part + "=".repeat((4 - (part.length % 4)) % 4)), (c) => c.charCodeAt(0));
    const claims = JSON.parse(new TextDecoder().decode(bytes));
    return claims && typeof claims === "object" ? claims : {};
  } catch (e) {
    return {};
  }
}

/** `data` in pieces whose JSON-encoded UTF-8 size is at most `budget` bytes, never splitting a character. */
export function splitByBytes(data, budget = FRAME_BUDGET) {
  const enc = new TextEncoder();
  const pieces = [];
  let piece = "";
  let size = 0;
  for (const ch of data) {
    // what the character costs inside a JSON string: escapes (\r, \u001b, \") count in full
    const cost = enc.encode(JSON.stringify(ch)).length - 2;
    if (size + cost > budget && piece) {
      pieces.push(piece);
      piece = "";
      size = 0;
    }
    piece += ch;
    size += cost;
  }
  if (piece) pieces.push(piece);
  return pieces;
}

// 128 random bits, hex: crypto.getRandomValues works outside secure contexts too (randomUUID does not)
function writerId() {
  const bytes = globalThis.crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** A token source: `token` (fixed), `tokenProvider` (async, fresh each call) or `tokenUrl` (GET, JSON {token}). */
function tokenSource(options) {
  if (options.tokenProvider) return { renewable: true, get: () => Promise.resolve(options.tokenProvider()) };
  if (options.tokenUrl) {
    return {
      renewable: true,
      get: async () => {
        const resp = await fetch(options.tokenUrl, { credentials: "same-origin", cache: "no-store" });
        let body = {};
        try { body = await resp.json(); } catch (e) { /* said below */ }
        if (!resp.ok || typeof body.token !== "string") {
          throw new Error(body.error || `the token URL answered ${resp.status}`);
        }
        return body.token;
      },
    };
  }
  return { renewable: false, get: () => Promise.resolve(options.token) };
}

/**
 * Connect `options.terminal` to the session its token grants. Options: `url` (the WebSocket stage
 * URL), one of `token` / `tokenProvider` / `tokenUrl`, `task` or `branch` (default: the token's
 * grant), `readOnly` (default: the token's `ro`), `keepaliveSeconds` (300), `onState(state, detail)`
 * with state one of connecting, open, waiting (watch: the task is not running yet), reattaching,
 * reconnecting, ended, refused; `onFrame(frame)` for every frame received. With `watch: true` (a
 * task's run, read-only): `onTask(frame)` gets the run's `task` frame(s), the last one final, and
 * `taskStatus` (optional, an async function answering the task's row, e.g. `{status, commitSha,
 * error, errorKind}`, from the frontend's backend) is asked while the task is not running, so a task
 * that ended before the page could watch it ends the watch too. Returns the session: `state`,
 * `sessionId`, `task` (the final `task` frame once seen), `push(message)`, `close()`.
 */
export function connect(options) {
  const term = options.terminal;
  const WS = options.WebSocket || globalThis.WebSocket;
  const keepaliveMs = 1000 * (options.keepaliveSeconds ?? 300);
  const watch = !!options.watch;
  const onTask = options.onTask || (() => {});
  const source = tokenSource(options);
  const onState = options.onState || (() => {});
  const setTimer = globalThis.setTimeout.bind(globalThis);
  const clearTimer = globalThis.clearTimeout.bind(globalThis);

  let token = null, claims = {}, target = null, readOnly = watch || !!options.readOnly;
  let ws = null, sessionId = null, nextSeq = null, ended = false;
  const pending = new Map();
  // the page's keystrokes, numbered across its connections (the runner orders them per writer)
  const writer = writerId();
  let inSeq = 0, held = [], heldBytes = 0, roNoticeShown = false;
  let everOpen = false, failedConnects = 0, backoff = 500;
  let resumeTimer = null, resumeDelay = RESUME_FIRST_MS, reattaching = false;
  let renewTimer = null, keepaliveTimer = null, renewing = null;

  let outQueue = [], writing = false;
  // xterm calls a write's callback once it has parsed it; a terminal without callbacks gets every piece at once
  const flowControl = typeof term.write === "function" && term.write.length >= 2;

  const session = {
    state: "connecting",
    sessionId: null,
    task: null,
    get readOnly() { return readOnly; },
    push(message = "Refine with Kiro") {
      if (sessionId && !readOnly && !ended) send({ action: "push", sessionId, message });
    },
    close() {
      if (sessionId && ws && ws.readyState === 1) send({ action: "close", sessionId });
      finish("ended", "closed by the page");
    },
  };

  function state(s, detail = "") {
    session.state = s;
    onState(s, detail);
  }
  function send(frame, sock = ws) {
    if (sock && sock.readyState === 1) { sock.send(JSON.stringify(frame)); return true; }
    return false;
  }
  // everything shown goes through here, in order: a batch per xterm write while it is busy
  function show(text) {
    if (!flowControl) { term.write(text); return; }
    outQueue.push(text);
    if (!writing) drain();
  }
  function drain() {
    if (!outQueue.length) { writing = false; return; }
    writing = true;
    const text = outQueue.length === 1 ? outQueue[0] : outQueue.join("");
    outQueue = [];
    term.write(text, drain);
  }
  function say(text, colour = 31) { show(`\r\n\x1b[${colour}m[${text}]\x1b[0m\r\n`); }
  function stopTimers() {
    clearTimer(resumeTimer); clearTimer(renewTimer); clearInterval(keepaliveTimer);
    resumeTimer = renewTimer = keepaliveTimer = null;
  }
  function finish(s, message) {
    if (ended) return;
    ended = true;
    stopTimers();
    state(s, message);
    if (s === "refused") say(message);
    const sock = ws;
    ws = null;
    if (sock && sock.readyState <= 1) sock.close();
  }
  const expired = () => typeof claims.exp === "number" && claims.exp * 1000 < Date.now();

  function apply() {
    while (nextSeq !== null && pending.has(nextSeq)) { show(pending.get(nextSeq)); pending.delete(nextSeq); nextSeq++; }
    for (const k of pending.keys()) if (nextSeq !== null && k < nextSeq) pending.delete(k);
  }
  function sendInput(data) {
    for (const piece of splitByBytes(data)) {
      // a piece the socket no longer takes is held for the next connection, and numbered then
      if (send({ action: "input", sessionId, data: piece, seq: inSeq + 1, writer })) inSeq++;
      else hold(piece);
    }
  }
  function hold(data) {
    const size = new TextEncoder().encode(data).length;
    if (heldBytes + size <= HELD_INPUT_BYTES) { held.push(data); heldBytes += size; }
  }

  // re-attach from the last seq applied: the runner replays what this page missed
  function resume() {
    resumeTimer = null;
    if (ended) return;
    if (sessionId === null) { openSession(); return; }
    send({ action: "resume", sessionId, lastSeq: nextSeq === null ? 0 : nextSeq - 1 });
  }
  function resumeLater(why) {
    reattaching = true;
    state("reattaching", why);
    clearTimer(resumeTimer);
    resumeTimer = setTimer(resume, resumeDelay);
    resumeDelay = Math.min(resumeDelay * 2, RESUME_MAX_MS);
  }
  // watch: the task is not running here yet (or its run was given back): open again later, and ask
  // the frontend's `taskStatus` meanwhile whether it has ended already
  // (`afresh`: a new attempt, numbered from 1 again; else the same run, opened from the last seq shown)
  function waitForRun(why, delay = WATCH_RETRY_MS, afresh = false) {
    sessionId = session.sessionId = null;
    if (afresh) { nextSeq = null; pending.clear(); }
    state("waiting", why);
    clearTimer(resumeTimer);
    resumeTimer = setTimer(async () => {
      resumeTimer = null;
      if (ended) return;
      if (options.taskStatus) {
        let row = null;
        try { row = await options.taskStatus(); } catch (e) { /* unknown: keep waiting */ }
        if (ended) return;
        if (row && FINAL_STATUSES.includes(row.status)) {
          taskEnded({ action: "task", taskId: target.task, status: row.status, commitSha: row.commitSha,
            error: row.error, errorKind: row.errorKind });
          return;
        }
      }
      openSession();
    }, delay);
  }
  function taskLine(f) {
    if (f.status === "complete") return f.commitSha ? `task complete: pushed ${f.commitSha.slice(0, 12)}` : "task complete";
    if (f.status === "failed") return `task failed${f.errorKind ? ` [${f.errorKind}]` : ""}${f.error ? ": " + f.error : ""}`;
    return `task ${f.status}`;
  }
  // the run's final word (from the runner's task frame, or the row): shown, reported, and the end
  function taskEnded(f) {
    session.task = f;
    say(taskLine(f), f.status === "complete" ? 32 : 31);
    onTask(f);
    finish("ended", taskLine(f));
  }

  function openSession() {
    const open = { action: "open", cols: term.cols, rows: term.rows };
    if (target.task) open.taskId = target.task; else open.branch = target.branch;
    if (watch && nextSeq !== null) open.lastSeq = nextSeq - 1; // the same run again: from where it was
    send(open);
  }

  async function freshToken() {
    token = await source.get();
    claims = tokenClaims(token || "");
    scheduleRenewal();
  }
  function scheduleRenewal() {
    clearTimer(renewTimer);
    renewTimer = null;
    if (!source.renewable || typeof claims.exp !== "number") return;
    const life = claims.exp - (claims.iat || Date.now() / 1000);
    const at = (claims.exp - Math.min(RENEW_AHEAD_S, life / 2)) * 1000;
    renewTimer = setTimer(renew, Math.max(0, at - Date.now()));
  }
  // a fresh token, then a new connection that resumes the session; the old one is closed once the
  // new one is attached (make before break: no output is lost meanwhile)
  async function renew() {
    if (ended || renewing) return;
    renewing = (async () => {
      try {
        await freshToken();
      } catch (e) {
        state("reconnecting", `could not renew the token: ${e.message}; retrying`);
        renewTimer = setTimer(renew, 5000);
        return;
      }
      if (!ended && ws && ws.readyState === 1 && sessionId !== null) open(ws);
    })();
    try { await renewing; } finally { renewing = null; }
  }

  function open(previous = null) {
    if (ended) return;
    state(everOpen ? "reconnecting" : "connecting");
    const sock = new WS(`${options.url}?token=${encodeURIComponent(token)}`);
    let opened = false;
    let retired = false; // replaced by a newer connection: its close is expected
    if (!previous) ws = sock;
    sock.onopen = () => {
      opened = everOpen = true;
      failedConnects = 0; backoff = 500;
      clearInterval(sock.keepalive);
      sock.keepalive = setInterval(() => send({ action: "ping" }, sock), keepaliveMs);
      if (sessionId === null) { state("open", readOnly ? "read-only" : ""); openSession(); }
      else send({ action: "resume", sessionId, lastSeq: nextSeq === null ? 0 : nextSeq - 1 }, sock);
    };
    sock.onmessage = (ev) => {
      if (ended) return;
      let f;
      try { f = JSON.parse(ev.data); } catch (e) { return; }
      if (options.onFrame) options.onFrame(f);
      if (f.action === "pong") return;
      if (f.action === "opened") {
        if (previous && ws === previous) {
          // the renewed connection is attached: it takes over, and the old one goes
          ws = sock;
          previous.retired = true;
          clearInterval(previous.keepalive);
          previous.close();
        }
        sessionId = session.sessionId = f.sessionId;
        if (nextSeq === null || f.nextSeq > nextSeq) nextSeq = f.nextSeq;
        apply();
        clearTimer(resumeTimer); resumeTimer = null; resumeDelay = RESUME_FIRST_MS;
        const wasAway = reattaching;
        reattaching = false;
        state("open", watch ? `watching task ${f.taskId || target.task} on ${f.branch}`
          : `${f.branch}${readOnly ? " (read-only)" : ""}`);
        if (!readOnly && (wasAway || f.resumed)) send({ action: "resize", sessionId, cols: term.cols, rows: term.rows });
        if (!readOnly) { const keys = held.splice(0); heldBytes = 0; for (const data of keys) sendInput(data); }
      } else if (f.action === "output") {
        if (nextSeq === null || f.seq >= nextSeq) pending.set(f.seq, f.data);
        apply();
      } else if (f.action === "task" && watch) {
        if (FINAL_STATUSES.includes(f.status)) { taskEnded(f); return; }
        onTask(f);
        // given back (pending) or taken over (lost): the task runs again, numbered afresh
        say(f.status === "lost" ? "another runner took the task over; watching its next run…"
          : "the run was given back; watching the task's next attempt…", 33);
        waitForRun("waiting for the task's next run…", WATCH_RETRY_MS, true);
      } else if (f.action === "exit" && watch) {
        // a run's exit after its task frame (handled above); one without it: the run is gone
        if (f.sessionId === sessionId) waitForRun("the run ended; waiting for the task's next run…");
      } else if (f.action === "exit") {
        say(`session ended${f.reason ? ": " + f.reason : ""}`, 33);
        finish("ended", `session ended (code ${f.code})`);
      } else if (f.action === "question") {
        // a run waiting for a person (APPROVAL=escalate): its question, and how to answer it here
        if (f.pending) {
          const how = readOnly ? "a read-write terminal of this task can answer it"
            : `type ${(f.choices || []).join("/") || "an answer"} and Enter`;
          say(`the agent asks: ${f.question || "?"} (${how})`, 33);
        } else {
          say(f.answer ? `answered: ${f.answer}` : "no answer came in time", 33);
        }
      } else if (f.action === "pushed") {
        say(f.commitSha ? "pushed " + f.commitSha.slice(0, 12) : "nothing to commit", 32);
      } else if (f.action === "error") {
        onError(f);
      }
    };
    // browsers fire close after error; some clients fire only one of them: handle the first
    sock.onerror = sock.onclose = () => {
      clearInterval(sock.keepalive);
      if (retired || sock.retired || ended) return;
      retired = true;
      if (previous && ws === previous) return; // a renewal that failed: the old connection carries on
      if (ws !== sock) return;
      ws = null;
      reconnect(opened);
    };
  }

  function onError(f) {
    if (watch && (f.code === "no_session" || (f.code === "throttled" && sessionId === null))) {
      waitForRun("the task is not running yet; its output shows once it starts…",
        f.code === "throttled" ? 2 * WATCH_RETRY_MS : WATCH_RETRY_MS);
      return;
    }
    if (watch && f.code === "no_runner" && sessionId !== null) {
      // the run's route is gone: it ended while this page was away, or its runner is reconnecting
      waitForRun("the run is out of reach; watching again…", RESUME_FIRST_MS);
      return;
    }
    if (f.code === "runner_gone" || f.code === "no_runner") {
      resumeLater(f.code === "runner_gone"
        ? "the runner went away; reattaching when it is back…"
        : "no runner holds this session right now; retrying…");
      return;
    }
    if (f.code === "token_expired") {
      if (source.renewable) { renew(); return; }
      finish("refused", "the token has expired; reload the page with a fresh token");
      return;
    }
    if (f.code === "read_only") { if (!roNoticeShown) { roNoticeShown = true; say(f.message); } return; }
    if (sessionId === null && FATAL.includes(f.code)) { finish("refused", f.message); return; }
    show(`\r\n\x1b[31m[${f.code || "error"}] ${f.message}\x1b[0m\r\n`);
  }

  async function reconnect(wasOpen) {
    if (!wasOpen) {
      // the handshake failed: the authorizer refused the token (401/403), or the endpoint is down. A
      // page cannot tell which: a fixed token is never retried on a first connect, and only briefly later
      failedConnects++;
      if (!source.renewable && (!everOpen || expired() || failedConnects >= RECONNECT_TRIES)) {
        finish("refused", "refused: the token is invalid or has expired; reload the page with a fresh token");
        return;
      }
      if (source.renewable && failedConnects >= RECONNECT_TRIES) {
        finish("refused", "refused: the gateway does not accept the tokens this page is given");
        return;
      }
    }
    state("reconnecting", "disconnected; reconnecting…");
    const delay = backoff;
    backoff = Math.min(backoff * 2, 10000);
    await new Promise((r) => setTimer(r, delay));
    if (ended) return;
    if (source.renewable && (expired() || !wasOpen)) {
      try { await freshToken(); } catch (e) { finish("refused", `no fresh token: ${e.message}`); return; }
    }
    open();
  }

  term.onData((data) => {
    if (ended || !sessionId) return;
    if (readOnly) {
      if (!roNoticeShown) { roNoticeShown = true; say("read-only: this page watches the session; keystrokes are not sent", 33); }
      return;
    }
    if (reattaching || !ws || ws.readyState !== 1) { hold(data); return; }
    sendInput(data);
  });
  term.onResize(({ cols, rows }) => {
    if (sessionId && !readOnly && !reattaching) send({ action: "resize", sessionId, cols, rows });
  });

  (async () => {
    try {
      await freshToken();
    } catch (e) {
      finish("refused", `no token: ${e.message}`);
      return;
    }
    if (!token) { finish("refused", "no token: give ?token=... (or a token URL)"); return; }
    target = options.task ? { task: options.task } : options.branch ? { branch: options.branch }
      : claims.task ? { task: claims.task } : claims.branch ? { branch: claims.branch } : null;
    if (options.readOnly === undefined && !watch) readOnly = !!claims.ro;
    if (!target) { finish("refused", "the token grants no task or branch"); return; }
    if (watch && !target.task) { finish("refused", "watch needs a task (taskId, or a token for one)"); return; }
    if (!source.renewable && expired()) {
      finish("refused", "refused: this token has expired; reload the page with a fresh token");
      return;
    }
    open();
  })();
  return session;
}

/**
 * Make an xterm.js terminal in `element`, fitted to it (and refitted when the window resizes), and
 * connect it (`options` as for `connect`, plus `terminalOptions` for xterm). Returns
 * `{ terminal, fit, session }`.
 */
export async function mountTerminal(element, options) {
  const [{ Terminal }, { FitAddon }] = await Promise.all([import("@xterm/xterm"), import("@xterm/addon-fit")]);
  const terminal = new Terminal({ cursorBlink: true, scrollback: 10000, ...(options.terminalOptions || {}) });
  const fit = new FitAddon();
  terminal.loadAddon(fit);
  terminal.open(element);
  fit.fit();
  globalThis.addEventListener("resize", () => fit.fit());
  const session = connect({ ...options, terminal });
  return { terminal, fit, session };
}
