"""gRPC: the Open Inference Protocol's `inference.GRPCInferenceService` (KServe v2, with Triton's
`ModelStreamInfer`), the standard `grpc.health.v1` health service and server reflection.

- `grpc_service.proto`: the published proto the service implements (`make proto` generates the
  `grpc_service_pb2*` modules beside it; a test fails when they drift from it).
- `server`: the servicers and `start()`, which the app's lifespan calls on `LOSSD_GRPC_PORT`.
"""
