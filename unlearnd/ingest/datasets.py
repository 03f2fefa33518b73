"""Datasets an admin registers: an uploaded .npz, or data already on the server (builtin, torchvision,
ImageFolder), validated and turned into tensors plus the fields of the dataset record.

Datasets are kept as x (N, C, H, W) uint8 0-255 or float32 0-1, y (N,) int64, and unique string ids of
the training rows.
"""

from __future__ import annotations

import errno
import io
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from unlearnd.ingest.errors import DatasetTooLargeError, InvalidDatasetError

MAX_CHANNELS = 64
MAX_SIDE = 4096
MAX_CLASSES = 100_000
MAX_ID_LENGTH = 256
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
NPZ_KEYS = ("x_train", "y_train", "ids_train", "x_test", "y_test", "class_names")
TORCHVISION_SETS = ("CIFAR10", "CIFAR100", "MNIST", "FashionMNIST", "KMNIST")
SOURCES = ("builtin:digits", *(f"torchvision:{n}" for n in TORCHVISION_SETS), "imagefolder")


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
        raise InvalidDatasetError(f"{what} has shape {list(x.shape)}; expected 4 dimensions (N, C, H, W)")
    n, c, h, w = x.shape
    if n < 1:
        raise InvalidDatasetError(f"{what} holds no images")
    if not 1 <= c <= MAX_CHANNELS or not 1 <= h <= MAX_SIDE or not 1 <= w <= MAX_SIDE:
        raise InvalidDatasetError(f"{what} has shape {list(x.shape)}; expected (N, C, H, W) with channels "
                                  f"first, 1 <= C <= {MAX_CHANNELS} and 1 <= H, W <= {MAX_SIDE}")
    if c > 4 and w in (1, 3, 4):
        raise InvalidDatasetError(f"{what} has shape {list(x.shape)}, which looks channels-last "
                                  "(N, H, W, C); transpose it to (N, C, H, W)")
    if x.dtype == np.uint8:
        return np.ascontiguousarray(x)
    if x.dtype.kind != "f":
        raise InvalidDatasetError(f"{what} has dtype {x.dtype}; give uint8 (0-255) or float (0-1) pixels")
    x = x.astype(np.float32)
    if not np.isfinite(x).all():
        raise InvalidDatasetError(f"{what} contains NaN or infinite values")
    low, high = float(x.min()), float(x.max())
    if low < 0.0 or high > 1.0:
        raise InvalidDatasetError(f"float pixels of {what} must lie in [0, 1]; got [{low:g}, {high:g}] "
                                  "(send uint8 for 0-255 pixels)")
    return np.ascontiguousarray(x)


def _check_labels(y: Any, n: int, what: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1 or len(y) != n:
        raise InvalidDatasetError(f"{what} has shape {list(y.shape)}; expected ({n},), one label per image")
    if y.dtype.kind not in "iu":
        raise InvalidDatasetError(f"{what} has dtype {y.dtype}; labels must be integers")
    if y.min() < 0:
        raise InvalidDatasetError(f"{what} holds negative labels (e.g. {int(y.min())}); labels are 0..K-1")
    if y.max() >= MAX_CLASSES:
        raise InvalidDatasetError(f"{what} holds label {int(y.max())}; at most {MAX_CLASSES} classes")
    return y.astype(np.int64)


def _check_ids(ids: Any, n: int) -> list[str]:
    """Unique non-empty strings, one per training image; ints become their decimal strings."""
    ids = np.asarray(ids)
    if ids.ndim != 1 or len(ids) != n:
        raise InvalidDatasetError(f"ids_train has shape {list(ids.shape)}; expected ({n},), "
                                  "one id per training image")
    if ids.dtype.kind in "iu":
        out = [str(int(v)) for v in ids]
    elif ids.dtype.kind == "U":
        out = [str(v) for v in ids]
    elif ids.dtype.kind == "S":
        try:
            out = [v.decode("utf-8") for v in ids]
        except UnicodeDecodeError:
            raise InvalidDatasetError("ids_train holds bytes that are not UTF-8") from None
    else:
        raise InvalidDatasetError(f"ids_train has dtype {ids.dtype}; give strings or integers")
    bad = [i for i in out if not i or len(i) > MAX_ID_LENGTH or not i.isprintable()]
    if bad:
        raise InvalidDatasetError(f"ids must be 1-{MAX_ID_LENGTH} printable characters; e.g. {bad[0]!r}")
    if len(set(out)) != len(out):
        seen: set[str] = set()
        dupes = [i for i in out if i in seen or seen.add(i)]
        raise InvalidDatasetError(f"ids_train must be unique; duplicated: {sorted(set(dupes))[:10]}")
    return out


def _check_class_names(names: Any) -> list[str]:
    names = np.asarray(names)
    if names.ndim != 1 or names.dtype.kind not in "US" or len(names) == 0:
        raise InvalidDatasetError("class_names must be a non-empty 1-D array of strings")
    out = [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in names]
    if len(out) > MAX_CLASSES:
        raise InvalidDatasetError(f"at most {MAX_CLASSES} classes")
    for name in out:
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate, which no response can carry
            raise InvalidDatasetError(f"class names must be Unicode text; {name!r} is not") from None
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
        raise InvalidDatasetError("give both x_test and y_test, or neither")
    tensors = {"x_train": torch.from_numpy(x_train), "y_train": torch.from_numpy(y_train)}
    n_test, label_max = 0, int(y_train.max())
    if x_test is not None:
        x_test = _check_images(x_test, "x_test")
        if x_test.shape[1:] != x_train.shape[1:]:
            raise InvalidDatasetError(f"x_test images are {list(x_test.shape[1:])}; x_train images are "
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
            raise InvalidDatasetError(f"label {label_max} has no class name: class_names holds {len(names)}")
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


MAX_DATASET_SETTING = "UNLEARND_MAX_DATASET_BYTES"


def _too_large(what: str, size: int, limit: int) -> DatasetTooLargeError:
    return DatasetTooLargeError(f"{what} {size} bytes; at most {limit} bytes are accepted "
                                f"({MAX_DATASET_SETTING}={limit})")


def _declared_array_bytes(archive: zipfile.ZipFile) -> int:
    """What the arrays of an .npz say they hold (their .npy headers), read before any array is: a small
    member may declare a huge shape."""
    total = 0
    for info in archive.infolist():
        with archive.open(info) as member:
            try:
                version = np.lib.format.read_magic(member)
                shape, _, dtype = (np.lib.format.read_array_header_1_0(member) if version == (1, 0)
                                   else np.lib.format.read_array_header_2_0(member))
            except ValueError:
                continue  # not an array: np.load below says what is wrong with it
            total += int(np.prod(shape, dtype=object)) * dtype.itemsize
    return total


def parse_npz(data: bytes, max_uncompressed_bytes: int = 256 << 20) -> ParsedDataset:
    """An uploaded .npz (read with allow_pickle=False) with x_train, y_train and optional
    ids_train, x_test, y_test, class_names. DatasetTooLargeError (naming the limit) when the archive
    unpacks, its arrays declare, or the stored tensors would take more than `max_uncompressed_bytes`."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        total = sum(info.file_size for info in archive.infolist())
    except (zipfile.BadZipFile, ValueError, OSError):
        raise InvalidDatasetError("the file is not an .npz archive "
                                  "(write it with numpy.savez or savez_compressed)") from None
    if total > max_uncompressed_bytes:
        raise _too_large("the archive unpacks to", total, max_uncompressed_bytes)
    try:
        declared = _declared_array_bytes(archive)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        raise InvalidDatasetError(f"the .npz archive is malformed: {type(exc).__name__}: {exc}") from None
    if declared > max_uncompressed_bytes:
        raise _too_large("the arrays of the archive declare", declared, max_uncompressed_bytes)
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            keys = set(npz.files)
            unknown = sorted(keys - set(NPZ_KEYS))
            if unknown:
                raise InvalidDatasetError(f"unknown arrays {unknown}; the archive may hold {list(NPZ_KEYS)}")
            missing = [k for k in ("x_train", "y_train") if k not in keys]
            if missing:
                raise InvalidDatasetError(f"the archive lacks {missing}")
            arrays = {k: npz[k] for k in keys}
    except InvalidDatasetError:
        raise
    except ValueError as exc:  # object arrays need pickle: refused
        raise InvalidDatasetError(f"an array of the archive cannot be read without pickle: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - any corrupt member is the client's problem
        raise InvalidDatasetError(f"the .npz archive is malformed: {type(exc).__name__}: {exc}") from None
    from models_store.files import sha256_bytes

    parsed = build_dataset(arrays["x_train"], arrays["y_train"], ids_train=arrays.get("ids_train"),
                           x_test=arrays.get("x_test"), y_test=arrays.get("y_test"),
                           class_names=arrays.get("class_names"), source="npz",
                           extra={"upload_sha256": sha256_bytes(data)})
    stored = sum(t.numel() * t.element_size() for t in parsed.tensors.values())
    if stored > max_uncompressed_bytes:  # labels widen to int64, mixed uint8/float images to float32
        raise _too_large("the dataset would be stored as", stored, max_uncompressed_bytes)
    return parsed


def load_builtin_digits() -> ParsedDataset:
    """scikit-learn's 8×8 digits, split as the demo splits it (ids train-<row>)."""
    from unlearning import load_digits_split

    train, test = load_digits_split(test_fraction=0.2, seed=0)
    return build_dataset(train.x.numpy(), train.y.numpy(), ids_train=np.array(train.ids),
                         x_test=test.x.numpy(), y_test=test.y.numpy(),
                         class_names=np.array([str(i) for i in range(10)]), source="builtin:digits")


def _existing_dir(root: str | Path | None, source: str) -> Path:
    if not root:
        raise InvalidDatasetError(f"source {source!r} needs 'root', a directory on the server")
    try:
        path = Path(root).expanduser()
    except RuntimeError:  # ~user of no user
        raise InvalidDatasetError(f"root {str(root)[:200]!r} names the home of no user on the server") from None
    if not path.is_dir():
        raise InvalidDatasetError(f"root {str(root)[:200]!r} is not a directory on the server")
    resolved = path.resolve()
    try:
        str(resolved).encode("utf-8")  # the record keeps it, and every response listing it must carry it
    except UnicodeEncodeError:  # bytes of no UTF-8 character on the way (a link into such a folder)
        raise InvalidDatasetError(f"root {str(root)[:200]!r} leads to a path that is not UTF-8 text") from None
    return resolved


def load_torchvision(name: str, root: str | Path | None) -> ParsedDataset:
    """A torchvision dataset already on disk under `root` (download=False: nothing is fetched)."""
    if name not in TORCHVISION_SETS:
        raise InvalidDatasetError(f"unknown torchvision dataset {name!r}; known: {list(TORCHVISION_SETS)}")
    path = _existing_dir(root, f"torchvision:{name}")
    import torch
    from torchvision import datasets

    cls = getattr(datasets, name)
    try:
        train, test = cls(str(path), train=True, download=False), cls(str(path), train=False, download=False)
    except (RuntimeError, OSError, ValueError) as exc:
        raise InvalidDatasetError(f"torchvision {name} not found or corrupt under {str(root)!r} (it is never "
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
        raise InvalidDatasetError(f"imagefolder root {str(root)!r} needs a train/ folder "
                                  "with one folder per class")
    classes = [d.name for d in _class_dirs(train_dir)]
    if not classes:
        raise InvalidDatasetError("train/ holds no class folders")
    index = {c: i for i, c in enumerate(classes)}

    def collect(split_dir: Path) -> list[tuple[Path, int]]:
        items = []
        for class_dir in _class_dirs(split_dir):
            if class_dir.name not in index:
                raise InvalidDatasetError(f"{split_dir.name}/{class_dir.name} is not a class of train/ "
                                          f"({classes[:20]})")
            files = _image_files(class_dir)
            if not files:
                raise InvalidDatasetError(f"{split_dir.name}/{class_dir.name} holds no images "
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
            raise InvalidDatasetError(f"{f.relative_to(root).as_posix()} is not a readable image: "
                                      f"{exc}") from None
        if size is None:
            size = img.size
        elif img.size != size:
            raise InvalidDatasetError(f"all images must have one size: {f.relative_to(root).as_posix()} is "
                                      f"{img.size[0]}×{img.size[1]}, the first is {size[0]}×{size[1]} "
                                      "(width×height)")
        loaded.append(img)
    gray = all(img.mode in ("1", "L", "LA", "I", "I;16", "F") for img in loaded)
    out = []
    for img in loaded:
        arr = np.asarray(img.convert("L" if gray else "RGB"), dtype=np.uint8)
        out.append(arr[None] if gray else arr.transpose(2, 0, 1))
    return out


UNREADABLE_ROOT = {errno.ENAMETOOLONG, errno.EACCES, errno.EPERM, errno.ENOENT, errno.ENOTDIR, errno.ELOOP}
"""What `root` itself can be wrong with: a name too long, a folder the server may not read, a dangling link."""


def load_source(source: str, root: str | None) -> ParsedDataset:
    if source == "builtin:digits":
        return load_builtin_digits()
    try:
        if source.startswith("torchvision:"):
            return load_torchvision(source.removeprefix("torchvision:"), root)
        if source == "imagefolder":
            return load_imagefolder(root)
    except OSError as exc:
        if exc.errno not in UNREADABLE_ROOT:
            raise  # the server's own fault (no file handles left, a failing disk): a 500
        raise InvalidDatasetError(f"root cannot be read on the server: {exc.strerror}") from None
    raise InvalidDatasetError(f"unknown source {source!r}; known: {list(SOURCES)}")


def public_dataset(record: dict[str, Any], ids_preview: int = 5) -> dict[str, Any]:
    """A dataset record without its (possibly long) id list: a count and the first few ids instead."""
    ids = record.get("ids_train", [])
    out = {k: v for k, v in record.items() if k != "ids_train"}
    out["ids_train_preview"] = list(ids[:ids_preview])
    return out
