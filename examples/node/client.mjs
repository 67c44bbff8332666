// lossd from Node.js 18+ with nothing but the built-in fetch: v1 JSON, v1 base64 and v2 (JSON and binary).
// Usage: node examples/node/client.mjs [base-url]   (default http://localhost:8000)
// Prints one JSON line per call: the case, what was sent, and what came back.

const base = process.argv[2] ?? "http://localhost:8000";

async function post(path, body, headers = { "content-type": "application/json" }) {
  const res = await fetch(base + path, { method: "POST", headers, body });
  if (!res.ok) {
    const problem = await res.json();
    throw new Error(`${path}: ${res.status} ${problem.detail ?? problem.error}`);
  }
  return res;
}

// Little-endian bytes of a typed array, as base64 (lossd's "b64" tensors).
const toB64 = (typed) => Buffer.from(typed.buffer, typed.byteOffset, typed.byteLength).toString("base64");
const fromB64 = (text, Type) => {
  const bytes = Buffer.from(text, "base64");
  return Array.from(new Type(bytes.buffer, bytes.byteOffset, bytes.byteLength / Type.BYTES_PER_ELEMENT));
};

const input = [[2.0, 0.5, -1.0], [0.1, 0.2, 3.0]];
const target = [0, 2];

// v1, nested JSON arrays, with the gradient of input.
{
  const res = await post("/v1/losses/cross_entropy", JSON.stringify({ input, target, label_smoothing: 0.1, return_grad: true }));
  const out = await res.json();
  console.log(JSON.stringify({ case: "v1-json", loss: "cross_entropy", input, target, label_smoothing: 0.1, result: out.loss, grad: out.grad.input }));
}

// v1, base64 tensors both ways: float32 input, int64 class indices, per-element losses.
{
  const body = {
    input: { b64: toB64(new Float32Array(input.flat())), shape: [2, 3], dtype: "float32" },
    target: { b64: toB64(new BigInt64Array(target.map(BigInt))), shape: [2], dtype: "int64" },
    reduction: "none",
    output_encoding: "base64",
  };
  const out = await (await post("/v1/losses/cross_entropy", JSON.stringify(body))).json();
  console.log(JSON.stringify({ case: "v1-base64", loss: "cross_entropy", input, target, reduction: "none", result: fromB64(out.loss.b64, Float32Array), shape: out.loss.shape }));
}

// v2 (Open Inference Protocol), JSON tensors, parameters in "parameters".
{
  const prediction = [0.5, 1.5, -2.0, 4.0];
  const truth = [0.0, 1.0, -1.0, 3.0];
  const request = {
    id: "node-1",
    parameters: { beta: 0.5 },
    inputs: [
      { name: "input", shape: [4], datatype: "FP32", data: prediction },
      { name: "target", shape: [4], datatype: "FP32", data: truth },
    ],
    outputs: [{ name: "loss" }, { name: "grad_input" }],
  };
  const out = await (await post("/v2/models/smooth_l1/infer", JSON.stringify(request))).json();
  const byName = Object.fromEntries(out.outputs.map((o) => [o.name, o.data]));
  console.log(JSON.stringify({ case: "v2-json", loss: "smooth_l1", input: prediction, target: truth, beta: 0.5, id: out.id, result: byName.loss[0], grad: byName.grad_input }));
}

// v2 with the binary tensor data extension, both ways.
{
  const prediction = new Float32Array([0.25, -1.0, 3.0, 0.5]);
  const truth = new Float32Array([0.0, -1.5, 2.0, 1.0]);
  const header = JSON.stringify({
    inputs: [
      { name: "input", shape: [4], datatype: "FP32", parameters: { binary_data_size: prediction.byteLength } },
      { name: "target", shape: [4], datatype: "FP32", parameters: { binary_data_size: truth.byteLength } },
    ],
    outputs: [{ name: "loss", parameters: { binary_data: true } }],
  });
  const head = Buffer.from(header);
  const body = Buffer.concat([head, Buffer.from(prediction.buffer), Buffer.from(truth.buffer)]);
  const res = await post("/v2/models/mse/infer", body, {
    "content-type": "application/octet-stream",
    "inference-header-content-length": String(head.length),
  });
  const raw = Buffer.from(await res.arrayBuffer());
  const jsonLength = Number(res.headers.get("inference-header-content-length"));
  const meta = JSON.parse(raw.subarray(0, jsonLength).toString());
  const data = raw.subarray(jsonLength);
  const loss = new Float32Array(data.buffer.slice(data.byteOffset, data.byteOffset + meta.outputs[0].parameters.binary_data_size));
  console.log(JSON.stringify({ case: "v2-binary", loss: "mse", input: Array.from(prediction), target: Array.from(truth), result: loss[0] }));
}
