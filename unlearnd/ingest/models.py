"""Models an admin registers: a TorchScript archive, or a state_dict of a known architecture, loaded and
proven to run as the metadata describes.

Models are kept as the state_dict of `NormalizedClassifier(net, mean, std)`, so they take raw [0, 1] pixels
and normalise inside, after any forget vector δ; `net` is either built from `arch` (state_dict uploads) or
the uploaded TorchScript module.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from unlearnd.ingest.errors import InvalidModelError

if TYPE_CHECKING:
    from service.schemas import ModelMetadata


def check_dataset_fits(meta: ModelMetadata, dataset: dict[str, Any], role: str) -> None:
    """The dataset's image shape is the model's input shape and its labels are classes of the model."""
    if list(dataset["input_shape"]) != list(meta.input_shape):
        raise InvalidModelError(f"{role} {dataset['name']!r} has images {dataset['input_shape']}; "
                                f"the model takes {meta.input_shape}")
    if dataset["num_classes"] > meta.num_classes:
        raise InvalidModelError(f"{role} {dataset['name']!r} has labels up to {dataset['num_classes'] - 1}; "
                                f"the model has {meta.num_classes} classes")


@dataclass
class ParsedModel:
    model: Any  # NormalizedClassifier, eval mode, on the CPU
    state_dict: dict[str, Any]  # what the store keeps as the weights
    format: str  # "safetensors" (state_dict + arch) or "torchscript"
    arch: str
    torchscript: bytes | None = None


def _unwrap_state_dict(obj: Any) -> dict[str, Any]:
    import torch

    if isinstance(obj, dict) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
        for key in ("state_dict", "model_state_dict", "model"):  # common checkpoint layouts
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                      for k, v in obj.items()):
        raise InvalidModelError("the file does not hold a state_dict "
                                "(a mapping of parameter names to tensors)")
    if all(k.startswith("module.") for k in obj):  # saved from DataParallel
        obj = {k.removeprefix("module."): v for k, v in obj.items()}
    return obj


def _is_torchscript_zip(data: bytes) -> bool:
    """TorchScript archives are zips with <prefix>/constants.pkl or <prefix>/code/; torch.save zips
    have neither."""
    try:
        names = zipfile.ZipFile(io.BytesIO(data)).namelist()
    except (zipfile.BadZipFile, ValueError, OSError):
        return False
    return any(n.endswith("/constants.pkl") or "/code/" in n for n in names)


def _read_state_dict(data: bytes, filename: str) -> dict[str, Any]:
    import torch

    if filename.lower().endswith(".safetensors"):
        from safetensors.torch import load

        try:
            return _unwrap_state_dict(load(data))
        except InvalidModelError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise InvalidModelError(f"the .safetensors file is malformed: {exc}") from None
    if _is_torchscript_zip(data):  # torch.load would hand it to torch.jit.load: refuse instead
        raise InvalidModelError("the file is a TorchScript archive; send it without the form field 'arch'")
    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - pickles refused by weights_only, corrupt files, TorchScript
        raise InvalidModelError(f"the file is not a state_dict saved with torch.save (loaded with "
                                f"weights_only=True) or a .safetensors file: {str(exc)[:500]}") from None
    return _unwrap_state_dict(obj)


def _check_finite(tensors: Any, what: str) -> None:
    for name, t in tensors:
        if t.is_floating_point() and not bool(t.isfinite().all()):
            raise InvalidModelError(f"{what} {name!r} contains NaN or infinite values")


def parse_model(data: bytes, filename: str, arch: str | None, meta: ModelMetadata) -> ParsedModel:
    """Load an upload as the model `meta` describes and prove it runs: (1, C, H, W) -> (1, num_classes)."""
    from unlearning import NormalizedClassifier, build_model

    if not data:
        raise InvalidModelError("the file is empty")
    torchscript = None
    if arch:
        try:
            net = build_model(arch, meta.channels, meta.num_classes)
        except Exception as exc:  # noqa: BLE001 - unknown arch, or one that cannot take this shape
            raise InvalidModelError(f"cannot build arch {arch!r}: {exc}") from None
        state_dict = _read_state_dict(data, filename)
        _check_finite(state_dict.items(), "weight")
        try:
            net.load_state_dict(state_dict, strict=True)
        except Exception as exc:  # noqa: BLE001 - missing/unexpected keys, shape mismatches
            raise InvalidModelError(f"the state_dict does not fit arch {arch!r} with {meta.channels} "
                                    f"channels and {meta.num_classes} classes (weights of the bare network, "
                                    f"without normalisation): {str(exc)[:800]}") from None
        fmt = "safetensors"
    else:
        from unlearnd.runtime import load_torchscript_net

        try:
            net = load_torchscript_net(data)
        except Exception as exc:  # noqa: BLE001
            raise InvalidModelError(f"the file is not a TorchScript archive (torch.jit.save); for a "
                                    f"state_dict also send the form field 'arch': {str(exc)[:300]}") from None
        _check_finite(net.state_dict().items(), "weight")
        fmt, arch, torchscript = "torchscript", "torchscript", data
    mean = meta.mean if meta.mean is not None else [0.0] * meta.channels
    std = meta.std if meta.std is not None else [1.0] * meta.channels
    model = NormalizedClassifier(net, mean, std).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    _check_forward(model, meta)
    state = {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}
    return ParsedModel(model, state, fmt, arch, torchscript)


def _check_forward(model: Any, meta: ModelMetadata) -> None:
    """Zero batches of 1 and 2 give finite logits (N, num_classes) that depend on the input
    differentiably (forget vectors are learnt through input gradients)."""
    import torch

    for n in (1, 2):
        shape = [n, *meta.input_shape]
        x = torch.zeros(shape, requires_grad=True)
        try:
            with torch.enable_grad():
                out = model(x)
        except Exception as exc:  # noqa: BLE001
            raise InvalidModelError(f"the model fails on a zero batch of shape {shape}: "
                                    f"{str(exc)[:500]}") from None
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != (n, meta.num_classes):
            got = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise InvalidModelError(f"on input {shape} the model returns {got}; "
                                    f"expected logits [{n}, {meta.num_classes}]")
        if not bool(out.isfinite().all()):
            raise InvalidModelError(f"on a zero batch {shape} the model returns NaN or infinite logits")
        if not out.requires_grad:
            raise InvalidModelError("the model's output does not depend differentiably on its input "
                                    "(forget vectors need input gradients)")
