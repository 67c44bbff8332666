"""Peer: the quick FastAPI endpoint people write first (pydantic list[float], torch.tensor)."""

import sys

import torch
import torch.nn.functional as F
import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel

app = FastAPI()


class Body(BaseModel):
    input: list[float]
    target: list[float]


@app.post("/mse")
def mse(body: Body) -> dict[str, float]:
    return {"loss": F.mse_loss(torch.tensor(body.input), torch.tensor(body.target)).item()}


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
