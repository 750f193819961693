// A dumb SIP-over-WebSocket relay for two browser phones: no proxy at all.
//
// It answers every REGISTER with 200 itself and passes everything else from
// one WebSocket to the other, untouched. Two JsSIP phones on it can call each
// other, so the browser test can check its browsers, page and driver alone:
// when a call over the relay works and the same call through sipproxy does
// not, the fault is the proxy's. Not a SIP server: one pair of phones, no
// routing, no transactions, no authentication.
//
// usage: node relay.mjs PORT    (prints "ready" once it listens on 127.0.0.1)

import { WebSocketServer } from "ws";

const port = Number(process.argv[2]);
if (!Number.isInteger(port) || port <= 0) {
  process.stderr.write("usage: node relay.mjs PORT\n");
  process.exit(2);
}

// RFC 7118 §4.1: the WebSocket subprotocol is "sip".
const server = new WebSocketServer({
  host: "127.0.0.1",
  port,
  handleProtocols: (offered) => (offered.has("sip") ? "sip" : false),
});
const phones = new Set();

// A 200 for a REGISTER: its Via, From, Call-ID, CSeq and Contact, a To tag.
function registered(request) {
  const [head] = request.split("\r\n\r\n");
  const lines = ["SIP/2.0 200 OK"];
  for (const line of head.split("\r\n").slice(1)) {
    const name = line.slice(0, line.indexOf(":")).trim().toLowerCase();
    if (["via", "v", "from", "f", "call-id", "i", "cseq"].includes(name)) lines.push(line);
    else if (name === "to" || name === "t") lines.push(`${line};tag=relay`);
    else if (name === "contact" || name === "m") lines.push(`${line};expires=600`);
  }
  return [...lines, "Content-Length: 0", "", ""].join("\r\n");
}

server.on("connection", (socket) => {
  phones.add(socket);
  socket.on("close", () => phones.delete(socket));
  socket.on("message", (data) => {
    const text = data.toString();
    process.stderr.write(`relay: ${text.slice(0, text.indexOf("\r\n"))}\n`);
    if (text.startsWith("REGISTER ")) {
      socket.send(registered(text));
      return;
    }
    for (const other of phones) if (other !== socket) other.send(text);
  });
});
server.on("listening", () => process.stdout.write("ready\n"));
