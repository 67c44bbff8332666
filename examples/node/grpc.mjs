// lossd over gRPC from Node.js: the Open Inference Protocol (inference.GRPCInferenceService), called with
// @grpc/grpc-js and the service's own .proto file loaded at run time by @grpc/proto-loader (no code generation).
//
// Setup:  cd examples/node && npm ci   (or `make install-node` from the repository root)
// Usage:  LOSSD_GRPC=127.0.0.1:8001 node examples/node/grpc.mjs   (lossd's default gRPC port is 8001)
//
// Every loss is a model: its tensor arguments are the inputs (torch's names: input, target, ...), its other
// arguments go in the request's `parameters`, and its outputs are `loss` and `grad_<argument>`.
// Prints everything it sent and received as one JSON object on stdout.

import path from "node:path";
import { fileURLToPath } from "node:url";

import grpc from "@grpc/grpc-js";
import protoLoader from "@grpc/proto-loader";

const target = process.env.LOSSD_GRPC ?? "127.0.0.1:8001";

// Load the service definition from the repository's proto file (two folders up from this script).
const here = path.dirname(fileURLToPath(import.meta.url));
const definition = protoLoader.loadSync(path.join(here, "..", "..", "service", "rpc", "grpc_service.proto"), {
  keepCase: true, // field names as in the .proto file: model_name, raw_input_contents, ...
  longs: String, // int64 values (shapes, int64 parameters) arrive as strings
  enums: String,
  defaults: true, // absent fields arrive with their default values
  oneofs: true, // an InferParameter tells which of its fields is set in `parameter_choice`
});
const { inference } = grpc.loadPackageDefinition(definition);
const client = new inference.GRPCInferenceService(target, grpc.credentials.createInsecure());

// Each call (the stream included, as a whole) gets 10 seconds; past that it fails with DEADLINE_EXCEEDED,
// and the server stops working on it.
const options = () => ({ deadline: new Date(Date.now() + 10_000) });

// A unary call as a promise: resolves with the response, or rejects with an error carrying `code` and `details`.
function call(method, request) {
  return new Promise((resolve, reject) => {
    client[method](request, options(), (error, response) => (error ? reject(error) : resolve(response)));
  });
}

// The bytes of a typed array (Float32Array, BigInt64Array, ...), as raw_input_contents wants them: typed arrays
// use the machine's byte order, which is little-endian on x86 and ARM alike, as the protocol expects.
const bytesOf = (typed) => Buffer.from(typed.buffer, typed.byteOffset, typed.byteLength);

// An output's values from its raw bytes. The bytes are copied into a fresh ArrayBuffer first: a Float32Array
// needs an offset that is a multiple of 4, and a Buffer received from the network may start anywhere.
const ARRAYS = { FP32: Float32Array, FP64: Float64Array };
function decode(output, bytes) {
  const copy = bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength);
  return Array.from(new ARRAYS[output.datatype](copy));
}

// The response's outputs by name: { loss: { datatype, shape, data }, grad_input: ... }. `outputs` holds the
// names, datatypes and shapes; `raw_output_contents` holds the values, one bytes blob per output, in the same order.
function outputsOf(response) {
  const byName = {};
  response.outputs.forEach((output, i) => {
    const data = decode(output, response.raw_output_contents[i]);
    byName[output.name] = { datatype: output.datatype, shape: output.shape.map(Number), data };
  });
  return byName;
}

const printed = { target };

// 1. Is the server ready? And what does a model take and give?
printed.ready = (await call("ServerReady", {})).ready;
const metadata = await call("ModelMetadata", { name: "cross_entropy" });
printed.metadata = {
  name: metadata.name,
  versions: metadata.versions,
  platform: metadata.platform,
  inputs: metadata.inputs.map((t) => ({ name: t.name, datatype: t.datatype, shape: t.shape.map(Number) })),
  outputs: metadata.outputs.map((t) => ({ name: t.name, datatype: t.datatype, shape: t.shape.map(Number) })),
};

// 2. mse with typed contents: the values as a repeated float field (fp32_contents). Without `outputs`
//    in the request, the response holds the loss alone.
{
  const input = [0.5, 1.5, -2.0, 4.0];
  const targetValues = [0.0, 1.0, -1.0, 3.0];
  const response = await call("ModelInfer", {
    model_name: "mse",
    id: "node-grpc-mse",
    inputs: [
      { name: "input", datatype: "FP32", shape: [4], contents: { fp32_contents: input } },
      { name: "target", datatype: "FP32", shape: [4], contents: { fp32_contents: targetValues } },
    ],
  });
  const out = outputsOf(response);
  printed.mse = { id: response.id, input, target: targetValues, loss: out.loss.data[0], loss_shape: out.loss.shape };
}

// 3. cross_entropy with raw inputs: FP32 logits and INT64 class indices as little-endian bytes, one blob per
//    input in the order of `inputs`. A parameter (label_smoothing, a double), and both the loss and the
//    gradient of `input` asked for.
{
  const logits = [2.0, 0.5, -1.0, 0.25, 0.125, 3.0];
  const classes = [0, 2];
  const response = await call("ModelInfer", {
    model_name: "cross_entropy",
    parameters: { label_smoothing: { double_param: 0.125 } },
    inputs: [
      { name: "input", datatype: "FP32", shape: [2, 3] },
      { name: "target", datatype: "INT64", shape: [2] },
    ],
    raw_input_contents: [bytesOf(new Float32Array(logits)), bytesOf(new BigInt64Array(classes.map(BigInt)))],
    outputs: [{ name: "loss" }, { name: "grad_input" }],
  });
  const out = outputsOf(response);
  printed.cross_entropy = {
    input: logits,
    input_shape: [2, 3],
    target: classes,
    label_smoothing: 0.125,
    loss: out.loss.data[0],
    grad_input: out.grad_input.data,
    grad_input_shape: out.grad_input.shape,
    datatypes: [out.loss.datatype, out.grad_input.datatype],
  };
}

// 4. An error: class index 5 with only 3 classes. The call fails with a gRPC status: INVALID_ARGUMENT for a
//    bad request, NOT_FOUND for an unknown model; `details` is the same message the HTTP API gives.
try {
  await call("ModelInfer", {
    model_name: "cross_entropy",
    inputs: [
      { name: "input", datatype: "FP32", shape: [1, 3], contents: { fp32_contents: [1.0, 2.0, 3.0] } },
      { name: "target", datatype: "INT64", shape: [1], contents: { int64_contents: [5] } },
    ],
  });
  printed.error = null;
} catch (error) {
  printed.error = { code: grpc.status[error.code], code_number: error.code, message: error.details };
}

// 5. ModelStreamInfer: one bidirectional stream, several requests, one answer per request in the same order.
//    An answer holds `infer_response`, or a non-empty `error_message` when its request failed (the stream goes on).
const streamed = [
  {
    model_name: "smooth_l1",
    id: "stream-1",
    parameters: { beta: { double_param: 0.5 } },
    inputs: [
      { name: "input", datatype: "FP32", shape: [3], contents: { fp32_contents: [0.25, -1.0, 3.0] } },
      { name: "target", datatype: "FP32", shape: [3], contents: { fp32_contents: [0.0, -1.5, 2.0] } },
    ],
  },
  {
    model_name: "no_such_loss",
    id: "stream-2",
    inputs: [{ name: "input", datatype: "FP32", shape: [1], contents: { fp32_contents: [1.0] } }],
  },
  {
    model_name: "l1",
    id: "stream-3",
    parameters: { reduction: { string_param: "sum" } },
    inputs: [
      { name: "input", datatype: "FP32", shape: [2], contents: { fp32_contents: [1.5, -0.75] } },
      { name: "target", datatype: "FP32", shape: [2], contents: { fp32_contents: [0.5, 0.25] } },
    ],
  },
];
const answers = await new Promise((resolve, reject) => {
  const stream = client.ModelStreamInfer(options());
  const received = [];
  stream.on("data", (answer) => received.push(answer));
  stream.on("end", () => resolve(received));
  stream.on("error", reject);
  for (const request of streamed) stream.write(request);
  stream.end(); // no more requests: the server answers those sent, then ends the stream
});
printed.stream = {
  requests: streamed, // exactly what was sent, for comparison
  answers: answers.map((answer) => {
    const response = answer.infer_response;
    if (answer.error_message) return { id: response.id, error_message: answer.error_message };
    return { id: response.id, model: response.model_name, loss: outputsOf(response).loss.data[0] };
  }),
};

client.close();
console.log(JSON.stringify(printed));
