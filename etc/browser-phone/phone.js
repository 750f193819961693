// A small JsSIP phone for one browser page: window.phone (see index.html).
//
// A person uses it through the form in index.html; the browser test
// (tests/browser/call.mjs) calls the same methods with page.evaluate(). Each
// wait is bounded, and everything the phone sees goes to window.phone.log.
// Needs the JsSIP browser bundle loaded first (the global JsSIP).
"use strict";

(() => {
  const MEDIA = { audio: true, video: false };
  // Media goes browser to browser. No STUN or TURN: the host candidates are
  // enough on one machine or one LAN (docs: README, "Browser phones").
  const PC_CONFIG = { iceServers: [] };

  const log = [];
  const state = {
    registered: false,
    incoming: 0,
    confirmed: false,
    ended: null,
    failed: null,
  };
  let ua = null;
  let session = null;
  let onRegistration = null;
  const waiters = [];

  function note(text) {
    log.push(`${(performance.now() / 1000).toFixed(3)} ${text}`);
    const element = document.getElementById("log");
    if (element) element.textContent = log.join("\n");
    for (const waiter of waiters.slice()) waiter();
  }

  // Resolve when predicate() holds; reject after `seconds` naming `what`.
  function until(predicate, what, seconds) {
    return new Promise((resolve, reject) => {
      const check = () => {
        const value = predicate();
        if (value) {
          finish();
          resolve(value);
        }
      };
      const timer = setTimeout(() => {
        finish();
        reject(new Error(`no ${what} within ${seconds} s`));
      }, seconds * 1000);
      const finish = () => {
        clearTimeout(timer);
        const at = waiters.indexOf(check);
        if (at >= 0) waiters.splice(at, 1);
      };
      waiters.push(check);
      check();
    });
  }

  function playRemote(connection) {
    connection.addEventListener("track", (event) => {
      const audio = document.getElementById("remote");
      if (audio && event.streams[0]) audio.srcObject = event.streams[0];
    });
  }

  function watch(newSession) {
    session = newSession;
    state.confirmed = false;
    state.ended = null;
    state.failed = null;
    session.on("peerconnection", ({ peerconnection }) => playRemote(peerconnection));
    if (session.connection) playRemote(session.connection);
    session.on("progress", () => note("call: progress"));
    session.on("accepted", () => note("call: accepted"));
    session.on("confirmed", () => {
      state.confirmed = true;
      note("call: confirmed");
    });
    session.on("ended", ({ originator, cause }) => {
      state.ended = { originator, cause };
      note(`call: ended by ${originator} (${cause})`);
    });
    session.on("failed", ({ originator, cause, message }) => {
      const status = message && message.status_code;
      state.failed = { originator, cause, status: status || null };
      note(`call: failed, ${originator} (${cause}${status ? ` ${status}` : ""})`);
    });
  }

  /**
   * Connect to `server` (ws:// or wss://) and register `uri` with `password`.
   * Resolves to {ok: true} once registered, or {ok: false, error} when the
   * WebSocket cannot be opened or the REGISTER is refused.
   */
  function start({ server, uri, password, autoAnswer = false }) {
    return new Promise((resolve) => {
      onRegistration = resolve;
      let socket;
      try {
        socket = new JsSIP.WebSocketInterface(server);
      } catch (error) {
        resolve({ ok: false, error: `bad server ${server}: ${error.message}` });
        return;
      }
      ua = new JsSIP.UA({
        sockets: [socket],
        uri,
        password,
        register: true,
        session_timers: false,
        connection_recovery_min_interval: 2,
        connection_recovery_max_interval: 4,
        user_agent: `sipproxy browser test (JsSIP ${JsSIP.version})`,
      });
      ua.on("connecting", () => note(`connecting to ${server}`));
      ua.on("connected", () => note("connected"));
      ua.on("disconnected", ({ error, code, reason }) => {
        note(`disconnected (code ${code}${reason ? `, ${reason}` : ""})`);
        if (onRegistration) {
          onRegistration({
            ok: false,
            error:
              `WebSocket ${server} could not be opened or was closed ` +
              `(code ${code}${error ? ", transport error" : ""})`,
          });
          onRegistration = null;
        }
      });
      ua.on("registered", () => {
        state.registered = true;
        note("registered");
        if (onRegistration) onRegistration({ ok: true });
        onRegistration = null;
      });
      ua.on("registrationFailed", ({ cause, response }) => {
        const status = response ? ` ${response.status_code}` : "";
        note(`registration failed: ${cause}${status}`);
        if (onRegistration) {
          onRegistration({ ok: false, error: `REGISTER failed: ${cause}${status}` });
        }
        onRegistration = null;
      });
      ua.on("newRTCSession", ({ session: created, originator }) => {
        if (originator !== "remote") return;
        state.incoming += 1;
        note(`incoming call from ${created.remote_identity.uri}`);
        watch(created);
        if (autoAnswer) {
          created.answer({ mediaConstraints: MEDIA, pcConfig: PC_CONFIG });
          note("answering");
        }
      });
      ua.start();
    });
  }

  /** Call `target` (a SIP URI) with audio. */
  function call(target) {
    watch(ua.call(target, { mediaConstraints: MEDIA, pcConfig: PC_CONFIG }));
    note(`calling ${target}`);
  }

  /** Inbound and outbound audio RTP counters of the current call. */
  async function stats() {
    const found = { bytesReceived: 0, packetsReceived: 0, bytesSent: 0 };
    const connection = session && session.connection;
    if (!connection) return found;
    const reports = await connection.getStats();
    reports.forEach((report) => {
      if (report.kind !== "audio") return;
      if (report.type === "inbound-rtp") {
        found.bytesReceived += report.bytesReceived || 0;
        found.packetsReceived += report.packetsReceived || 0;
      } else if (report.type === "outbound-rtp") {
        found.bytesSent += report.bytesSent || 0;
      }
    });
    found.iceConnectionState = connection.iceConnectionState;
    return found;
  }

  /** Wait until the current call has received audio, and return the counters. */
  async function heard(seconds) {
    const deadline = performance.now() + seconds * 1000;
    let last = await stats();
    while (last.bytesReceived === 0) {
      if (performance.now() > deadline) {
        throw new Error(`no audio received within ${seconds} s: ${JSON.stringify(last)}`);
      }
      await new Promise((resolve) => setTimeout(resolve, 200));
      last = await stats();
    }
    return last;
  }

  /** Answer the incoming call (when not answering at once). */
  function answer() {
    if (session) session.answer({ mediaConstraints: MEDIA, pcConfig: PC_CONFIG });
    note("answering");
  }

  function hangup() {
    if (session) session.terminate();
    note("hanging up");
  }

  function stop() {
    if (ua) ua.stop();
  }

  window.phone = {
    version: JsSIP.version,
    log,
    state,
    start,
    call,
    until: (what, seconds) => {
      const predicates = {
        incoming: () => state.incoming > 0 || state.failed,
        confirmed: () => state.confirmed || state.failed || state.ended,
        ended: () => state.ended || state.failed,
      };
      return until(predicates[what], what, seconds).then(() => ({ ...state }));
    },
    stats,
    heard,
    answer,
    hangup,
    stop,
  };
})();
