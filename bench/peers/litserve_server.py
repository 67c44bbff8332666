"""Peer: LitServe with its defaults (but no generated client.py), the same computation."""

import sys

import litserve as ls
import torch
import torch.nn.functional as F


class MSE(ls.LitAPI):
    def setup(self, device: str) -> None:
        self.device = device

    def decode_request(self, request: dict) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.tensor(request["input"]), torch.tensor(request["target"])

    def predict(self, pair: tuple[torch.Tensor, torch.Tensor]) -> float:
        return F.mse_loss(*pair).item()

    def encode_response(self, loss: float) -> dict[str, float]:
        return {"loss": loss}


if __name__ == "__main__":
    # generate_client_file=False: by default LitServe writes a client.py into the working directory
    ls.LitServer(MSE(), accelerator="cpu").run(port=int(sys.argv[1]), log_level="warning", generate_client_file=False)
