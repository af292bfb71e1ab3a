// A minimal worker client in Node.js: hello, submit one job, print the finished event
// as JSON. Usage: node client.mjs SOCKET_PATH
import net from "node:net";
import { encode, decode } from "@msgpack/msgpack";

function frame(message) {
  const body = encode(message);
  const header = Buffer.alloc(4);
  header.writeUInt32BE(body.length);
  return Buffer.concat([header, Buffer.from(body)]);
}

const socket = net.createConnection(process.argv[2]);
let buffer = Buffer.alloc(0);

socket.on("connect", () => {
  socket.write(frame({ type: "hello", version: 1 }));
  socket.write(frame({
    type: "submit",
    id: "from-node",
    job: {
      cmd: ["sh", "-c", "read x; echo node says $x"],
      stdin: new TextEncoder().encode("hi\n"),
      limits: { memory: "64M", wall_time: "5s" },
    },
  }));
});

socket.on("data", (chunk) => {
  buffer = Buffer.concat([buffer, chunk]);
  while (buffer.length >= 4 && buffer.length >= 4 + buffer.readUInt32BE(0)) {
    const length = buffer.readUInt32BE(0);
    const message = decode(buffer.subarray(4, 4 + length));
    buffer = buffer.subarray(4 + length);
    if (message.type === "error") {
      console.error(JSON.stringify(message));
      process.exit(2);
    }
    if (message.type === "event" && message.event === "finished") {
      const result = message.result;
      result.stdout = new TextDecoder().decode(result.stdout);
      result.stderr = new TextDecoder().decode(result.stderr);
      console.log(JSON.stringify(result));
      socket.end();
    }
  }
});
