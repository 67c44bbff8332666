"""Peer: a minimal fast FastAPI endpoint (orjson + np.asarray, no validation), and a raw float32 body one."""

import sys

import numpy as np
import orjson
import torch
import torch.nn.functional as F
import uvicorn
from fastapi import FastAPI, Request, Response

app = FastAPI()


@app.post("/mse")
async def mse(request: Request) -> Response:
    body = orjson.loads(await request.body())
    x = torch.from_numpy(np.asarray(body["input"], dtype=np.float32))
    y = torch.from_numpy(np.asarray(body["target"], dtype=np.float32))
    return Response(orjson.dumps({"loss": F.mse_loss(x, y).item()}), media_type="application/json")


@app.post("/mse_raw")
async def mse_raw(request: Request) -> Response:
    """The body is input then target, little-endian float32, n each."""
    both = torch.from_numpy(np.frombuffer(await request.body(), dtype=np.float32).copy())
    x, y = both.chunk(2)
    return Response(orjson.dumps({"loss": F.mse_loss(x, y).item()}), media_type="application/json")


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
