const { Worker, isMainThread, parentPort, workerData } = require("worker_threads");
if (isMainThread) {
  let sum = 0, done = 0;
  for (let i = 1; i <= 4; i++) {
    const w = new Worker(__filename, { workerData: i });
    w.on("message", (v) => { sum += v; if (++done === 4) console.log("threads " + sum); });
  }
} else {
  parentPort.postMessage(workerData);
}
