// Two browser phones calling each other through sipproxy, in headless Chromium.
//
// Serves etc/browser-phone/ (with the JsSIP bundle built into build/) on
// 127.0.0.1, opens it in two browser contexts of one Chromium (two separate
// profiles: cookies, storage, devices), registers the caller and the callee
// over the WebSocket --server, and with --scenario call: the caller calls the
// callee with audio, the callee answers, both wait for RTP to arrive
// (getStats: inbound-rtp bytesReceived > 0), the caller hangs up and the
// callee sees the BYE. --scenario register stops after the registrations.
//
// Prints one JSON object on stdout (ok, error, what each phone saw) and exits
// 0 when everything worked, 1 when a step failed, 2 on a usage error. Every
// wait is bounded; --timeout bounds the whole run. Progress goes to stderr.
//
// puppeteer-core drives a Chromium that is already installed (Debian's
// /usr/bin/chromium): it downloads no browser, unlike the puppeteer package.

import { createServer } from "node:http";
import { readFile } from "node:fs/promises";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";

import puppeteer from "puppeteer-core";

const HERE = fileURLToPath(new URL(".", import.meta.url));
const PAGE_DIR = fileURLToPath(new URL("../../etc/browser-phone/", import.meta.url));
const FILES = {
  "/index.html": [`${PAGE_DIR}index.html`, "text/html; charset=utf-8"],
  "/phone.js": [`${PAGE_DIR}phone.js`, "text/javascript; charset=utf-8"],
  "/jssip.min.js": [`${HERE}build/jssip.min.js`, "text/javascript; charset=utf-8"],
};

// Chromium as root, with nothing reaching past loopback: no sandbox (root),
// no background traffic of its own, fake microphone and camera granted
// without asking, loopback host candidates for ICE, real addresses rather
// than mDNS .local names in them.
export const CHROMIUM_FLAGS = [
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--no-default-browser-check",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  "--disable-default-apps",
  "--disable-extensions",
  "--disable-dev-shm-usage",
  "--use-fake-device-for-media-stream",
  "--use-fake-ui-for-media-stream",
  "--allow-loopback-in-peer-connection",
  "--disable-features=WebRtcHideLocalIpsWithMdns",
  "--autoplay-policy=no-user-gesture-required",
];

const USAGE = `usage: node call.mjs --server ws://HOST:PORT --caller URI --caller-password PW
       --callee URI --callee-password PW [--scenario call|register]
       [--page-port PORT] [--chromium PATH] [--profile DIR] [--timeout SECONDS]
       [--insecure]`;

function options() {
  const { values } = parseArgs({
    options: {
      server: { type: "string" },
      caller: { type: "string" },
      "caller-password": { type: "string", default: "" },
      callee: { type: "string" },
      "callee-password": { type: "string", default: "" },
      scenario: { type: "string", default: "call" },
      "page-port": { type: "string", default: "0" },
      chromium: { type: "string", default: process.env.CHROMIUM || "/usr/bin/chromium" },
      profile: { type: "string" },
      timeout: { type: "string", default: "45" },
      insecure: { type: "boolean", default: false },
    },
  });
  if (!values.server || !values.caller || !values.callee) throw new Error(USAGE);
  if (!["call", "register"].includes(values.scenario)) throw new Error(USAGE);
  return values;
}

function say(text) {
  process.stderr.write(`call.mjs: ${text}\n`);
}

// Reject after `seconds` with "no WHAT within N s".
function bounded(promise, what, seconds) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`no ${what} within ${seconds} s`)), seconds * 1000);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

function serve(port) {
  const server = createServer(async (request, response) => {
    const path = new URL(request.url, "http://127.0.0.1").pathname;
    const file = FILES[path === "/" ? "/index.html" : path];
    if (!file) {
      response.writeHead(404).end();
      return;
    }
    try {
      const body = await readFile(file[0]);
      response.writeHead(200, { "Content-Type": file[1], "Cache-Control": "no-store" });
      response.end(body);
    } catch (error) {
      response.writeHead(500).end(String(error));
    }
  });
  return new Promise((resolve) => {
    server.listen(port, "127.0.0.1", () => resolve(server));
  });
}

class Phone {
  constructor(name, page) {
    this.name = name;
    this.page = page;
    page.on("console", (message) => say(`${name} console: ${message.text()}`));
    page.on("pageerror", (error) => say(`${name} page error: ${error.message}`));
  }

  async open(url) {
    await bounded(this.page.goto(url, { waitUntil: "load" }), `${this.name}: page load`, 15);
    const version = await this.page.evaluate(() => window.phone && window.phone.version);
    if (!version) throw new Error(`${this.name}: the page has no window.phone (JsSIP not loaded?)`);
    return version;
  }

  run(what, seconds, fn, ...args) {
    return bounded(this.page.evaluate(fn, ...args), `${this.name}: ${what}`, seconds);
  }

  async register(server, uri, password, autoAnswer) {
    const result = await this.run(
      "registration",
      15,
      (account) => window.phone.start(account),
      { server, uri, password, autoAnswer },
    );
    if (!result.ok) throw new Error(`${this.name}: ${result.error}`);
  }

  async until(what, seconds) {
    const state = await this.run(
      what,
      seconds + 1,
      (w, s) => window.phone.until(w, s),
      what,
      seconds,
    );
    if (state.failed) {
      throw new Error(`${this.name}: call failed: ${JSON.stringify(state.failed)}`);
    }
    if (what === "confirmed" && !state.confirmed) {
      throw new Error(`${this.name}: call ended before it was confirmed (ACK): ${JSON.stringify(state.ended)}`);
    }
    return state;
  }

  async log() {
    try {
      return await bounded(this.page.evaluate(() => window.phone.log), "log", 3);
    } catch {
      return [];
    }
  }
}

async function main() {
  let args;
  try {
    args = options();
  } catch (error) {
    process.stderr.write(`${error.message}\n`);
    return 2;
  }
  const result = { ok: false, scenario: args.scenario, error: null };
  const overall = setTimeout(() => {
    result.error = `the whole run took over ${args.timeout} s`;
    process.stdout.write(`${JSON.stringify(result)}\n`);
    process.exit(1);
  }, Number(args.timeout) * 1000);

  const http = await serve(Number(args["page-port"]));
  const url = `http://127.0.0.1:${http.address().port}/index.html`;
  let browser = null;
  const phones = [];
  try {
    say(`starting ${args.chromium}`);
    browser = await puppeteer.launch({
      executablePath: args.chromium,
      headless: true,
      pipe: true,
      userDataDir: args.profile,
      args: CHROMIUM_FLAGS,
      acceptInsecureCerts: args.insecure,
      timeout: 20_000,
      protocolTimeout: 20_000,
    });
    result.browser = await browser.version();
    for (const name of ["caller", "callee"]) {
      const context = await browser.createBrowserContext();
      phones.push(new Phone(name, await context.newPage()));
    }
    const [caller, callee] = phones;
    result.jssip = await caller.open(url);
    await callee.open(url);
    say(`pages loaded from ${url}, JsSIP ${result.jssip}`);

    await caller.register(args.server, args.caller, args["caller-password"], false);
    await callee.register(args.server, args.callee, args["callee-password"], true);
    result.registered = true;
    say("both registered");

    if (args.scenario === "call") {
      await caller.run("call", 5, (target) => window.phone.call(target), args.callee);
      await callee.until("incoming", 10);
      await caller.until("confirmed", 15);
      await callee.until("confirmed", 10);
      say("call confirmed on both sides");
      result.caller = { stats: await caller.run("audio", 16, () => window.phone.heard(15)) };
      result.callee = { stats: await callee.run("audio", 16, () => window.phone.heard(15)) };
      say("audio received on both sides");
      await caller.run("hangup", 5, () => window.phone.hangup());
      result.caller.ended = (await caller.until("ended", 10)).ended;
      result.callee.ended = (await callee.until("ended", 10)).ended;
    }
    result.ok = true;
  } catch (error) {
    result.error = error.message;
  } finally {
    if (!result.ok) {
      result.logs = {};
      for (const phone of phones) result.logs[phone.name] = await phone.log();
    }
    for (const phone of phones) {
      await bounded(
        phone.page.evaluate(() => window.phone && window.phone.stop()),
        "stop",
        2,
      ).catch(() => {});
    }
    if (browser) await bounded(browser.close(), "browser close", 10).catch(() => {});
    http.close();
    clearTimeout(overall);
  }
  process.stdout.write(`${JSON.stringify(result)}\n`);
  return result.ok ? 0 : 1;
}

process.exitCode = await main();
