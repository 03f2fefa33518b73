"""The worker imports what a job needs before it forks work-horses, so that no job pays for imports."""

import json
import subprocess
import sys

PROBE = """
import json, sys
import torch
from workers.__main__ import preload_job_modules
preload_job_modules()
before = set(sys.modules)
from unlearning.metrics import svc_efficacy
from models_store.store import _tensors_from_bytes, _tensors_to_bytes
torch.optim.Adam([torch.zeros(1, requires_grad=True)])  # imports torch._dynamo on a process's first optimizer
svc_efficacy(torch.rand(8), torch.rand(8), torch.rand(4))  # imports sklearn's SVC
_tensors_from_bytes(_tensors_to_bytes({"w": torch.zeros(2)}))  # safetensors
from unlearning.models import build_model
build_model("resnet18_small", 3, 10)  # torchvision's ResNet
import boto3, psycopg  # the S3 store and PostgreSQL (imported where they are opened)
print(json.dumps(sorted(set(sys.modules) - before)))
"""


def test_a_job_imports_nothing_heavy_after_the_worker_preloaded():
    # in a fresh interpreter: this test process has imported much already
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=180, check=True)
    imported_late = json.loads(done.stdout.strip().splitlines()[-1])
    heavy = [name for name in imported_late if name.split(".")[0] in (
        "torch", "torchvision", "sklearn", "safetensors", "scipy", "matplotlib", "boto3", "botocore", "psycopg")]
    assert heavy == []
