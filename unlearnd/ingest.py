"""Parse and validate what admins register: datasets (npz, ImageFolder, torchvision, builtin) and models.

Everything here validates completely and returns tensors plus a record; nothing touches the store, so a
caller that writes only after a parse succeeded leaves the store untouched on bad input. Problems are
raised as `IngestError` (a 4xx with a title and a detail that says what to fix).

Datasets are kept as x (N, C, H, W) uint8 0-255 or float32 0-1, y (N,) int64, and unique string ids of
the training rows. Models are kept as the state_dict of `NormalizedClassifier(net, mean, std)`, so they
take raw [0, 1] pixels and normalise inside, after any forget vector δ; `net` is either built from `arch`
(state_dict uploads) or the uploaded TorchScript module.

torch is imported inside the functions that need it: the API process imports this module at start.
"""

from __future__ import annotations

import io
import json
import math
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

if TYPE_CHECKING:
    import torch

MAX_CHANNELS = 64
MAX_SIDE = 4096
MAX_CLASSES = 100_000
MAX_ID_LENGTH = 256
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
NPZ_KEYS = ("x_train", "y_train", "ids_train", "x_test", "y_test", "class_names")
TORCHVISION_SETS = ("CIFAR10", "CIFAR100", "MNIST", "FashionMNIST", "KMNIST")
SOURCES = ("builtin:digits", *(f"torchvision:{n}" for n in TORCHVISION_SETS), "imagefolder")


class IngestError(ValueError):
    """Bad input to a registration: answered as a problem with this status, title and detail."""

    def __init__(self, detail: str, title: str = "Invalid dataset", status: int = 422):
        super().__init__(detail)
        self.detail, self.title, self.status = detail, title, status


def _model_error(detail: str) -> IngestError:
    return IngestError(detail, title="Invalid model")


# ---- datasets -----------------------------------------------------------------------------------------
@dataclass
class ParsedDataset:
    """Validated tensors (x_train, y_train, optional x_test, y_test) and the record fields describing them."""

    tensors: dict[str, Any]  # name -> torch.Tensor
    info: dict[str, Any] = field(default_factory=dict)

    def record(self, name: str) -> dict[str, Any]:
        """The record `Store.put_dataset` stores (it adds data_sha256 and created_at)."""
        return {"name": name, **self.info}


def _check_images(x: Any, what: str) -> np.ndarray:
    """(N, C, H, W) uint8 0-255 kept as uint8, or float in [0, 1] as float32."""
    x = np.asarray(x)
    if x.ndim != 4:
        raise IngestError(f"{what} has shape {list(x.shape)}; expected 4 dimensions (N, C, H, W)")
    n, c, h, w = x.shape
    if n < 1:
        raise IngestError(f"{what} holds no images")
    if not 1 <= c <= MAX_CHANNELS or not 1 <= h <= MAX_SIDE or not 1 <= w <= MAX_SIDE:
        raise IngestError(f"{what} has shape {list(x.shape)}; expected (N, C, H, W) with channels first, "
                          f"1 <= C <= {MAX_CHANNELS} and 1 <= H, W <= {MAX_SIDE}")
    if c > 4 and w in (1, 3, 4):
        raise IngestError(f"{what} has shape {list(x.shape)}, which looks channels-last (N, H, W, C); "
                          "transpose it to (N, C, H, W)")
    if x.dtype == np.uint8:
        return np.ascontiguousarray(x)
    if x.dtype.kind != "f":
        raise IngestError(f"{what} has dtype {x.dtype}; give uint8 (0-255) or float (0-1) pixels")
    x = x.astype(np.float32)
    if not np.isfinite(x).all():
        raise IngestError(f"{what} contains NaN or infinite values")
    low, high = float(x.min()), float(x.max())
    if low < 0.0 or high > 1.0:
        raise IngestError(f"float pixels of {what} must lie in [0, 1]; got [{low:g}, {high:g}] "
                          "(send uint8 for 0-255 pixels)")
    return np.ascontiguousarray(x)


def _check_labels(y: Any, n: int, what: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1 or len(y) != n:
        raise IngestError(f"{what} has shape {list(y.shape)}; expected ({n},), one label per image")
    if y.dtype.kind not in "iu":
        raise IngestError(f"{what} has dtype {y.dtype}; labels must be integers")
    if y.min() < 0:
        raise IngestError(f"{what} holds negative labels (e.g. {int(y.min())}); labels are 0..K-1")
    if y.max() >= MAX_CLASSES:
        raise IngestError(f"{what} holds label {int(y.max())}; at most {MAX_CLASSES} classes")
    return y.astype(np.int64)


def _check_ids(ids: Any, n: int) -> list[str]:
    """Unique non-empty strings, one per training image; ints become their decimal strings."""
    ids = np.asarray(ids)
    if ids.ndim != 1 or len(ids) != n:
        raise IngestError(f"ids_train has shape {list(ids.shape)}; expected ({n},), "
                          "one id per training image")
    if ids.dtype.kind in "iu":
        out = [str(int(v)) for v in ids]
    elif ids.dtype.kind == "U":
        out = [str(v) for v in ids]
    elif ids.dtype.kind == "S":
        try:
            out = [v.decode("utf-8") for v in ids]
        except UnicodeDecodeError:
            raise IngestError("ids_train holds bytes that are not UTF-8") from None
    else:
        raise IngestError(f"ids_train has dtype {ids.dtype}; give strings or integers")
    bad = [i for i in out if not i or len(i) > MAX_ID_LENGTH or not i.isprintable()]
    if bad:
        raise IngestError(f"ids must be 1-{MAX_ID_LENGTH} printable characters; e.g. {bad[0]!r}")
    if len(set(out)) != len(out):
        seen: set[str] = set()
        dupes = [i for i in out if i in seen or seen.add(i)]
        raise IngestError(f"ids_train must be unique; duplicated: {sorted(set(dupes))[:10]}")
    return out


def _check_class_names(names: Any) -> list[str]:
    names = np.asarray(names)
    if names.ndim != 1 or names.dtype.kind not in "US" or len(names) == 0:
        raise IngestError("class_names must be a non-empty 1-D array of strings")
    out = [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in names]
    if len(out) > MAX_CLASSES:
        raise IngestError(f"at most {MAX_CLASSES} classes")
    return out


def build_dataset(
    x_train: Any, y_train: Any, *, ids_train: Any = None, x_test: Any = None, y_test: Any = None,
    class_names: Any = None, source: str, extra: dict[str, Any] | None = None,
) -> ParsedDataset:
    """Validate arrays from any source and turn them into tensors plus record fields."""
    import torch

    x_train = _check_images(x_train, "x_train")
    n = len(x_train)
    y_train = _check_labels(y_train, n, "y_train")
    ids = _check_ids(np.arange(n) if ids_train is None else ids_train, n)
    if (x_test is None) != (y_test is None):
        raise IngestError("give both x_test and y_test, or neither")
    tensors = {"x_train": torch.from_numpy(x_train), "y_train": torch.from_numpy(y_train)}
    n_test, label_max = 0, int(y_train.max())
    if x_test is not None:
        x_test = _check_images(x_test, "x_test")
        if x_test.shape[1:] != x_train.shape[1:]:
            raise IngestError(f"x_test images are {list(x_test.shape[1:])}; x_train images are "
                              f"{list(x_train.shape[1:])}")
        if x_test.dtype != x_train.dtype:  # one dtype per dataset: both uint8 or both float
            x_test = x_test.astype(np.float32) / 255.0 if x_test.dtype == np.uint8 else x_test
            x_train_f = x_train.astype(np.float32) / 255.0 if x_train.dtype == np.uint8 else x_train
            tensors["x_train"] = torch.from_numpy(np.ascontiguousarray(x_train_f))
        y_test = _check_labels(y_test, len(x_test), "y_test")
        tensors.update(x_test=torch.from_numpy(np.ascontiguousarray(x_test)), y_test=torch.from_numpy(y_test))
        n_test, label_max = len(x_test), max(label_max, int(y_test.max()))
    if class_names is not None:
        names = _check_class_names(class_names)
        if label_max >= len(names):
            raise IngestError(f"label {label_max} has no class name: class_names holds {len(names)}")
        num_classes = len(names)
    else:
        names, num_classes = None, label_max + 1
    counts = np.bincount(y_train, minlength=num_classes).tolist()
    info = {
        "source": source, "input_shape": list(x_train.shape[1:]), "num_classes": num_classes,
        "class_names": names, "n_train": n, "n_test": n_test,
        "dtype": str(tensors["x_train"].dtype).split(".")[-1],
        "class_counts_train": counts, "ids_train": ids, **(extra or {}),
    }
    return ParsedDataset(tensors, info)


def parse_npz(data: bytes, max_uncompressed_bytes: int = 4 << 30) -> ParsedDataset:
    """An uploaded .npz (read with allow_pickle=False) with x_train, y_train and optional
    ids_train, x_test, y_test, class_names."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        total = sum(info.file_size for info in archive.infolist())
    except (zipfile.BadZipFile, ValueError, OSError):
        raise IngestError("the file is not an .npz archive (write it with numpy.savez or savez_compressed)") \
            from None
    if total > max_uncompressed_bytes:
        raise IngestError(f"the archive unpacks to {total} bytes; at most {max_uncompressed_bytes}",
                          status=413, title="Dataset too large")
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            keys = set(npz.files)
            unknown = sorted(keys - set(NPZ_KEYS))
            if unknown:
                raise IngestError(f"unknown arrays {unknown}; the archive may hold {list(NPZ_KEYS)}")
            missing = [k for k in ("x_train", "y_train") if k not in keys]
            if missing:
                raise IngestError(f"the archive lacks {missing}")
            arrays = {k: npz[k] for k in keys}
    except IngestError:
        raise
    except ValueError as exc:  # object arrays need pickle: refused
        raise IngestError(f"an array of the archive cannot be read without pickle: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - any corrupt member is the client's problem
        raise IngestError(f"the .npz archive is malformed: {type(exc).__name__}: {exc}") from None
    from models_store.files import sha256_bytes

    return build_dataset(arrays["x_train"], arrays["y_train"], ids_train=arrays.get("ids_train"),
                         x_test=arrays.get("x_test"), y_test=arrays.get("y_test"),
                         class_names=arrays.get("class_names"), source="npz",
                         extra={"upload_sha256": sha256_bytes(data)})


def load_builtin_digits() -> ParsedDataset:
    """scikit-learn's 8×8 digits, split as the demo splits it (ids train-<row>)."""
    from unlearning import load_digits_split

    train, test = load_digits_split(test_fraction=0.2, seed=0)
    return build_dataset(train.x.numpy(), train.y.numpy(), ids_train=np.array(train.ids),
                         x_test=test.x.numpy(), y_test=test.y.numpy(),
                         class_names=np.array([str(i) for i in range(10)]), source="builtin:digits")


def _existing_dir(root: str | Path | None, source: str) -> Path:
    if not root:
        raise IngestError(f"source {source!r} needs 'root', a directory on the server")
    path = Path(root).expanduser()
    if not path.is_dir():
        raise IngestError(f"root {str(root)!r} is not a directory on the server")
    return path.resolve()


def load_torchvision(name: str, root: str | Path | None) -> ParsedDataset:
    """A torchvision dataset already on disk under `root` (download=False: nothing is fetched)."""
    if name not in TORCHVISION_SETS:
        raise IngestError(f"unknown torchvision dataset {name!r}; known: {list(TORCHVISION_SETS)}")
    path = _existing_dir(root, f"torchvision:{name}")
    import torch
    from torchvision import datasets

    cls = getattr(datasets, name)
    try:
        train, test = cls(str(path), train=True, download=False), cls(str(path), train=False, download=False)
    except (RuntimeError, OSError, ValueError) as exc:
        raise IngestError(f"torchvision {name} not found or corrupt under {str(root)!r} (it is never "
                          f"downloaded; put the files torchvision expects there): {exc}") from None

    def arrays(ds: Any) -> tuple[np.ndarray, np.ndarray]:
        x = ds.data.numpy() if isinstance(ds.data, torch.Tensor) else np.asarray(ds.data)
        y = ds.targets.numpy() if isinstance(ds.targets, torch.Tensor) else np.asarray(ds.targets)
        x = x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2)  # (N,H,W) or (N,H,W,C) -> (N,C,H,W)
        return np.ascontiguousarray(x), y.astype(np.int64)

    (x_train, y_train), (x_test, y_test) = arrays(train), arrays(test)
    classes = [str(c) for c in getattr(train, "classes", [])] or None
    return build_dataset(x_train, y_train, x_test=x_test, y_test=y_test,
                         class_names=None if classes is None else np.array(classes),
                         source=f"torchvision:{name}", extra={"root": str(path)})


def _image_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS)


def _class_dirs(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.is_dir() and not p.name.startswith("."))


def load_imagefolder(root: str | Path | None) -> ParsedDataset:
    """root/train/<class>/<image> (and optionally root/test/<class>/<image>), all images the same size.

    Classes are the sorted folder names of train/; ids are paths relative to train/ ("cat/001.png").
    Images are grayscale (C=1) when every image is, RGB (C=3) otherwise; stored as uint8.
    """
    path = _existing_dir(root, "imagefolder")
    train_dir = path / "train"
    if not train_dir.is_dir():
        raise IngestError(f"imagefolder root {str(root)!r} needs a train/ folder with one folder per class")
    classes = [d.name for d in _class_dirs(train_dir)]
    if not classes:
        raise IngestError("train/ holds no class folders")
    index = {c: i for i, c in enumerate(classes)}

    def collect(split_dir: Path) -> list[tuple[Path, int]]:
        items = []
        for class_dir in _class_dirs(split_dir):
            if class_dir.name not in index:
                raise IngestError(f"{split_dir.name}/{class_dir.name} is not a class of train/ "
                                  f"({classes[:20]})")
            files = _image_files(class_dir)
            if not files:
                raise IngestError(f"{split_dir.name}/{class_dir.name} holds no images "
                                  f"({', '.join(IMAGE_EXTENSIONS)})")
            items += [(f, index[class_dir.name]) for f in files]
        return items

    train_items = collect(train_dir)
    test_dir = path / "test"
    test_items = collect(test_dir) if test_dir.is_dir() else []
    images = _read_images([f for f, _ in train_items + test_items], path)
    n = len(train_items)
    x = np.stack(images)
    ids = [f.relative_to(train_dir).as_posix() for f, _ in train_items]
    y = np.array([label for _, label in train_items + test_items], dtype=np.int64)
    return build_dataset(x[:n], y[:n], ids_train=np.array(ids), x_test=x[n:] if test_items else None,
                         y_test=y[n:] if test_items else None, class_names=np.array(classes),
                         source="imagefolder", extra={"root": str(path)})


def _read_images(files: list[Path], root: Path) -> list[np.ndarray]:
    """Decoded images as (C, H, W) uint8: grayscale if all are, else RGB; all must have one size."""
    from PIL import Image, UnidentifiedImageError

    loaded, size = [], None
    for f in files:
        try:
            with Image.open(f) as im:
                im.load()
                img = im.copy()
        except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
            raise IngestError(f"{f.relative_to(root).as_posix()} is not a readable image: {exc}") from None
        if size is None:
            size = img.size
        elif img.size != size:
            raise IngestError(f"all images must have one size: {f.relative_to(root).as_posix()} is "
                              f"{img.size[0]}×{img.size[1]}, the first is {size[0]}×{size[1]} "
                              "(width×height)")
        loaded.append(img)
    gray = all(img.mode in ("1", "L", "LA", "I", "I;16", "F") for img in loaded)
    out = []
    for img in loaded:
        arr = np.asarray(img.convert("L" if gray else "RGB"), dtype=np.uint8)
        out.append(arr[None] if gray else arr.transpose(2, 0, 1))
    return out


class DatasetSource(BaseModel):
    """JSON body of POST /v1/datasets for data already on the server."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(..., min_length=1, max_length=64)
    source: str = Field(..., description=f"one of {list(SOURCES)}")
    root: str | None = Field(None, max_length=4096,
                             description="A directory on the server (not for builtin).")


def load_source(source: str, root: str | None) -> ParsedDataset:
    if source == "builtin:digits":
        return load_builtin_digits()
    if source.startswith("torchvision:"):
        return load_torchvision(source.removeprefix("torchvision:"), root)
    if source == "imagefolder":
        return load_imagefolder(root)
    raise IngestError(f"unknown source {source!r}; known: {list(SOURCES)}")


def public_dataset(record: dict[str, Any], ids_preview: int = 5) -> dict[str, Any]:
    """A dataset record without its (possibly long) id list: a count and the first few ids instead."""
    ids = record.get("ids_train", [])
    out = {k: v for k, v in record.items() if k != "ids_train"}
    out["ids_train_preview"] = list(ids[:ids_preview])
    return out


# ---- models -------------------------------------------------------------------------------------------
class ModelMetadata(BaseModel):
    """The `metadata` JSON form field of POST /v1/models."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    name: str = Field(..., min_length=1, max_length=64)
    input_shape: list[int] = Field(..., min_length=3, max_length=3, description="[C, H, W]")
    num_classes: int = Field(..., ge=2, le=MAX_CLASSES)
    class_names: list[str] | None = None
    mean: list[float] | None = Field(None, description="Per channel, applied inside the model; default 0.")
    std: list[float] | None = Field(None, description="Per channel, applied inside the model; default 1.")
    train_dataset: str = Field(..., min_length=1, max_length=64)
    test_dataset: str | None = Field(None, min_length=1, max_length=64)

    @field_validator("input_shape")
    @classmethod
    def _shape(cls, v: list[int]) -> list[int]:
        c, h, w = v
        if not 1 <= c <= MAX_CHANNELS or not 1 <= h <= MAX_SIDE or not 1 <= w <= MAX_SIDE:
            raise ValueError(f"[C, H, W] with 1 <= C <= {MAX_CHANNELS} and 1 <= H, W <= {MAX_SIDE}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> ModelMetadata:
        channels = self.input_shape[0]
        if self.class_names is not None and len(self.class_names) != self.num_classes:
            raise ValueError(f"class_names holds {len(self.class_names)} names "
                             f"for {self.num_classes} classes")
        for key in ("mean", "std"):
            values = getattr(self, key)
            if values is None:
                continue
            if len(values) != channels:
                raise ValueError(f"{key} holds {len(values)} values for {channels} channels")
            if not all(math.isfinite(v) for v in values):
                raise ValueError(f"{key} holds NaN or infinite values")
        if self.std is not None and min(self.std) <= 0:
            raise ValueError("std must be positive")
        return self

    @property
    def channels(self) -> int:
        return self.input_shape[0]


def parse_model_metadata(text: str) -> ModelMetadata:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _model_error(f"metadata is not JSON: {exc}") from None
    try:
        return ModelMetadata.model_validate(obj)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(map(str, first.get("loc", ()))) or "metadata"
        detail = f"metadata.{where}: {first.get('msg', 'invalid')}"
        raise _model_error(detail.replace("metadata.metadata", "metadata")) from None


def check_dataset_fits(meta: ModelMetadata, dataset: dict[str, Any], role: str) -> None:
    """The dataset's image shape is the model's input shape and its labels are classes of the model."""
    if list(dataset["input_shape"]) != list(meta.input_shape):
        raise _model_error(f"{role} {dataset['name']!r} has images {dataset['input_shape']}; "
                           f"the model takes {meta.input_shape}")
    if dataset["num_classes"] > meta.num_classes:
        raise _model_error(f"{role} {dataset['name']!r} has labels up to {dataset['num_classes'] - 1}; "
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
        raise _model_error("the file does not hold a state_dict (a mapping of parameter names to tensors)")
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
        except IngestError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise _model_error(f"the .safetensors file is malformed: {exc}") from None
    if _is_torchscript_zip(data):  # torch.load would hand it to torch.jit.load: refuse instead
        raise _model_error("the file is a TorchScript archive; send it without the form field 'arch'")
    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - pickles refused by weights_only, corrupt files, TorchScript
        raise _model_error(f"the file is not a state_dict saved with torch.save (loaded with "
                           f"weights_only=True) or a .safetensors file: {str(exc)[:500]}") from None
    return _unwrap_state_dict(obj)


def _check_finite(tensors: Any, what: str) -> None:
    for name, t in tensors:
        if t.is_floating_point() and not bool(t.isfinite().all()):
            raise _model_error(f"{what} {name!r} contains NaN or infinite values")


def parse_model(data: bytes, filename: str, arch: str | None, meta: ModelMetadata) -> ParsedModel:
    """Load an upload as the model `meta` describes and prove it runs: (1, C, H, W) -> (1, num_classes)."""
    import torch

    from unlearning import NormalizedClassifier, build_model

    if not data:
        raise _model_error("the file is empty")
    torchscript = None
    if arch:
        try:
            net = build_model(arch, meta.channels, meta.num_classes)
        except Exception as exc:  # noqa: BLE001 - unknown arch, or one that cannot take this shape
            raise _model_error(f"cannot build arch {arch!r}: {exc}") from None
        state_dict = _read_state_dict(data, filename)
        _check_finite(state_dict.items(), "weight")
        try:
            net.load_state_dict(state_dict, strict=True)
        except Exception as exc:  # noqa: BLE001 - missing/unexpected keys, shape mismatches
            raise _model_error(f"the state_dict does not fit arch {arch!r} with {meta.channels} channels and "
                               f"{meta.num_classes} classes (weights of the bare network, without "
                               f"normalisation): {str(exc)[:800]}") from None
        fmt = "safetensors"
    else:
        from unlearnd.runtime import load_torchscript_net

        try:
            net = load_torchscript_net(data)
        except Exception as exc:  # noqa: BLE001
            raise _model_error(f"the file is not a TorchScript archive (torch.jit.save); for a state_dict "
                               f"also send the form field 'arch': {str(exc)[:300]}") from None
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
            raise _model_error(f"the model fails on a zero batch of shape {shape}: "
                               f"{str(exc)[:500]}") from None
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != (n, meta.num_classes):
            got = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise _model_error(f"on input {shape} the model returns {got}; "
                               f"expected logits [{n}, {meta.num_classes}]")
        if not bool(out.isfinite().all()):
            raise _model_error(f"on a zero batch {shape} the model returns NaN or infinite logits")
        if not out.requires_grad:
            raise _model_error("the model's output does not depend differentiably on its input "
                               "(forget vectors need input gradients)")
