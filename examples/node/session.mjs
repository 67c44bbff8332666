// Streams a dataset through a lossd session and prints the dataset-level losses.
// Node.js 18+, built-in fetch only:  node examples/node/session.mjs http://localhost:8000
//
// Batches of different sizes, class weights and ignored targets: the session's value is the loss torch
// gives on the whole dataset at once. A batch whose answer is lost is sent again with the same batch_id,
// and counts once.

const base = process.argv[2] ?? "http://localhost:8000";
const json = { "content-type": "application/json" };

async function call(method, path, body) {
  for (let attempt = 0; ; attempt++) {
    let res;
    try {
      res = await fetch(base + path, { method, headers: json, body: body && JSON.stringify(body) });
    } catch (err) {
      if (attempt >= 5) throw err;  // connection refused or reset: another replica may answer the retry
      await new Promise((r) => setTimeout(r, 200 * 2 ** attempt));
      continue;
    }
    if (res.status === 503 && attempt < 5) {  // overloaded, or the session store is unreachable
      await new Promise((r) => setTimeout(r, 1000 * Number(res.headers.get("retry-after") ?? 1)));
      continue;
    }
    const out = res.status === 204 ? null : await res.json();
    if (!res.ok) throw new Error(`${res.status} ${out.title}: ${out.detail}`);  // RFC 9457 problem
    return out;
  }
}

// A small deterministic dataset: 3 classes, 23 samples, some targets ignored (-100).
let seed = 7;
const random = () => ((seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31);
const rows = Array.from({ length: 23 }, () => [0, 1, 2].map(() => Math.round((random() * 4 - 2) * 100) / 100));
const labels = rows.map(() => (random() < 0.15 ? -100 : Math.floor(random() * 3)));
const groups = rows.map((_, i) => i % 2);  // say, two sources of samples
const weight = [0.2, 1.0, 2.5];

const session = await call("POST", "/v1/sessions", {
  losses: [
    { name: "cross_entropy" },  // entries as in /v1/evaluate: name, parameters, a tensors rename map
    { name: "cross_entropy", tensors: { weight: "class_weight" }, label_smoothing: 0.05 },
  ],
  ttl_s: 3600,
});

const sizes = [5, 8, 1, 9];  // batches of different sizes
let start = 0;
for (const [i, size] of sizes.entries()) {
  const batch = {
    batch_id: `batch-${i}`,
    tensors: {
      input: rows.slice(start, start + size),
      target: labels.slice(start, start + size),
      class_weight: weight,
    },
    groups: groups.slice(start, start + size),
  };
  await call("POST", `/v1/sessions/${session.id}/batches`, batch);
  if (i === 1) {  // as if the answer had been lost: the same batch again is recognised, not counted twice
    const again = await call("POST", `/v1/sessions/${session.id}/batches`, batch);
    if (!again.duplicate) throw new Error("a batch sent twice was counted twice");
  }
  start += size;
}

const result = await call("GET", `/v1/sessions/${session.id}`);
await call("DELETE", `/v1/sessions/${session.id}`);
console.log(JSON.stringify({ case: "session", input: rows, target: labels, weight, groups, result }));
