"""LitServe serving the benchmark's models as unlearnd does: `python -m bench.serve_litserve SPEC.json PORT`.

Same TorchScript network, same normalisation inside the model, same δ added and clipped before it, same
softmax and the same JSON in and out (`{"inputs": [...]}` -> `{"predictions": [{label, probabilities}]}`);
LitServe's own dynamic batching gathers concurrent requests (each may carry several images) into one forward
pass. One route per model, `POST /predict/<model>`, on 127.0.0.1.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import litserve as ls
import numpy as np
import torch
from safetensors.torch import load_file

from service.inference import in_serving_layout
from unlearnd.runtime import load_torchscript_net
from unlearning import NormalizedClassifier
from unlearning.evaluation import perturbed_logits


class ForgetVectorAPI(ls.LitAPI):
    """One model: x + δ clipped to [0, 1], normalised inside the model, softmax."""

    def __init__(self, spec: dict[str, Any], max_batch_size: int, batch_timeout_s: float,
                 channels_last_min_batch: int):
        super().__init__(max_batch_size=max_batch_size, batch_timeout=batch_timeout_s,
                         api_path=f"/predict/{spec['name']}")
        self.served, self.channels_last_min_batch = spec, channels_last_min_batch

    def setup(self, device: str) -> None:
        net = load_torchscript_net(Path(self.served["torchscript"]).read_bytes())
        self.model = NormalizedClassifier(net, self.served["mean"], self.served["std"]).eval()
        self.delta = load_file(self.served["delta"])["delta"] if self.served.get("delta") else None
        self.gate_classes = self.served.get("gate_classes")
        self.input_shape = tuple(self.served["input_shape"])
        torch.set_grad_enabled(False)

    def decode_request(self, request) -> torch.Tensor:  # unannotated: LitServe reads the type from it
        x = np.asarray(request["inputs"], dtype=np.float32)
        if x.shape[1:] != self.input_shape or not np.isfinite(x).all() or x.min() < 0 or x.max() > 1:
            raise ls.HTTPException(422, "inputs must be finite images in [0, 1] of the model's shape")
        return torch.from_numpy(x)

    def batch(self, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        return inputs  # requests carry several images each: concatenated in predict, split again after

    def predict(self, inputs: list[torch.Tensor]) -> list[np.ndarray]:
        x = in_serving_layout(torch.cat(inputs), self.channels_last_min_batch)  # as unlearnd does
        logits = perturbed_logits(self.model, x, self.delta, self.gate_classes)
        probabilities = torch.softmax(logits, dim=1).numpy()
        return np.split(probabilities, np.cumsum([len(x) for x in inputs])[:-1])

    def encode_response(self, probabilities: np.ndarray) -> dict[str, Any]:
        return {"predictions": [{"label": int(p.argmax()), "probabilities": [round(float(v), 6) for v in p]}
                                for p in probabilities]}


def main(argv: list[str]) -> None:
    spec_path, port = Path(argv[0]), int(argv[1])
    spec = json.loads(spec_path.read_text())
    apis = [ForgetVectorAPI(model, spec["max_batch_size"], spec["batch_timeout_s"], spec["channels_last_min_batch"])
            for model in spec["models"]]
    server = ls.LitServer(apis, accelerator="cpu", devices=1, workers_per_device=1, timeout=300)
    server.run(host="127.0.0.1", port=port, generate_client_file=False, log_level="warning")


if __name__ == "__main__":
    main(sys.argv[1:])
