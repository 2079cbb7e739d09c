"""The files miajax reads with numpy alone: IDX (MNIST-style) and npz."""

from __future__ import annotations

import gzip
import os
import pathlib

import numpy as np

from miajax.data.dataset import Dataset, _scale_images, _stratified_split

__all__ = ["read_idx"]

# ----------------------------------------------------------------- IDX files

_FASHION_FILES = {
  "x_train": "train-images-idx3-ubyte",
  "y_train": "train-labels-idx1-ubyte",
  "x_test": "t10k-images-idx3-ubyte",
  "y_test": "t10k-labels-idx1-ubyte",
}


def _read_bytes(path: pathlib.Path) -> bytes:
  try:
    raw = path.read_bytes()
  except OSError as err:
    raise ValueError(f"{path}: cannot read ({err})") from err
  if raw[:2] == b"\x1f\x8b":  # gzip magic, whatever the file is called
    try:
      raw = gzip.decompress(raw)
    except (OSError, EOFError, gzip.BadGzipFile) as err:
      raise ValueError(
        f"{path}: gzip data is truncated or corrupt ({err})"
      ) from err
  return raw


def read_idx(path: str | os.PathLike, *, ndim: int) -> np.ndarray:
  """Read an unsigned-byte IDX file (gzipped or not) with numpy alone.

  Args:
    path: the file.
    ndim: 3 for images (magic 0x00000803), 1 for labels (0x00000801).

  Returns:
    ``uint8`` array of the shape the header declares.

  Raises:
    ValueError naming the file: wrong magic number, short header, or a data
    size different from the product of the declared dimensions.
  """
  path = pathlib.Path(path)
  raw = _read_bytes(path)
  expected_magic = 0x0800 | ndim
  header = 4 + 4 * ndim
  if len(raw) < header:
    raise ValueError(
      f"{path}: {len(raw)} bytes, shorter than the {header}-byte IDX header"
    )
  magic = int.from_bytes(raw[:4], "big")
  if magic != expected_magic:
    raise ValueError(
      f"{path}: IDX magic number 0x{magic:08x}, expected 0x{expected_magic:08x} "
      f"(unsigned bytes, {ndim} dimension{'s' if ndim > 1 else ''})"
    )
  dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
  size = int(np.prod(dims, dtype=np.int64))
  if len(raw) - header != size:
    raise ValueError(
      f"{path}: header declares shape {dims} = {size} bytes of data but the "
      f"file holds {len(raw) - header} (truncated or corrupt)"
    )
  return np.frombuffer(raw, np.uint8, offset=header).reshape(dims)


def _find_idx_files(directory: pathlib.Path) -> dict[str, pathlib.Path] | None:
  """The four Fashion-MNIST files in ``directory``, None if there are none.

  A directory holding only some of them is an error rather than a miss, so a
  half-copied data_dir is not silently replaced by another source.
  """
  found = {}
  for key, stem in _FASHION_FILES.items():
    for candidate in (directory / f"{stem}.gz", directory / stem):
      if candidate.is_file():
        found[key] = candidate
        break
  if not found:
    return None
  if len(found) < len(_FASHION_FILES):
    missing = [
      _FASHION_FILES[k] + "[.gz]" for k in _FASHION_FILES if k not in found
    ]
    raise ValueError(
      f"fashion_mnist: {directory} holds some IDX files but lacks {missing}"
    )
  return found


def _load_idx_pair(
  images_path: pathlib.Path,
  labels_path: pathlib.Path,
  num_classes: int,
  image_shape: tuple[int, int],
):
  images = read_idx(images_path, ndim=3)
  labels = read_idx(labels_path, ndim=1)
  if images.shape[1:] != image_shape:
    raise ValueError(
      f"{images_path}: images are {images.shape[1:]}, expected {image_shape}"
    )
  if len(images) != len(labels):
    raise ValueError(
      f"{labels_path}: {len(labels)} labels for the {len(images)} images "
      f"of {images_path}"
    )
  if len(labels) and labels.max() >= num_classes:
    raise ValueError(
      f"{labels_path}: label {int(labels.max())} out of range "
      f"[0, {num_classes - 1}]"
    )
  return _scale_images(images)[..., None], labels.astype(np.int32)


# ----------------------------------------------------------------------- npz


def _load_npz(name: str, data_dir, num_classes: int) -> Dataset:
  recipe = "see the recipes in the miajax.data module docstring"
  if data_dir is None:
    raise ValueError(
      f"{name}: pass data_dir, the directory holding {name}.npz "
      f"(arrays x float32 [N, features], y int [N]); {recipe}"
    )
  path = pathlib.Path(data_dir) / f"{name}.npz"
  if not path.is_file():
    raise ValueError(
      f"{name}: {path} not found. Create it with arrays x float32 "
      f"[N, features] and y int [N] in 0..{num_classes - 1}; {recipe}"
    )
  try:
    with np.load(path, allow_pickle=False) as f:
      arrays = {k: f[k] for k in f.files}
  except (OSError, ValueError, EOFError) as err:
    raise ValueError(f"{path}: not a readable npz file ({err})") from err
  if "x" not in arrays or "y" not in arrays:
    raise ValueError(
      f"{path}: needs arrays 'x' and 'y', found {sorted(arrays)}"
    )
  if ("x_test" in arrays) != ("y_test" in arrays):
    raise ValueError(f"{path}: give both x_test and y_test or neither")

  def check(x_key, y_key):
    x, y = arrays[x_key], arrays[y_key]
    if x.ndim != 2 or not np.issubdtype(x.dtype, np.number):
      raise ValueError(
        f"{path}: {x_key} must be numeric [N, features], "
        f"got {x.dtype} {x.shape}"
      )
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
      raise ValueError(
        f"{path}: {y_key} must be int [N], got {y.dtype} {y.shape} "
        "(convert with .astype(int))"
      )
    if len(x) != len(y):
      raise ValueError(
        f"{path}: {x_key} has {len(x)} rows, {y_key} {len(y)} labels"
      )
    if len(y) and (y.min() < 0 or y.max() >= num_classes):
      raise ValueError(
        f"{path}: {y_key} spans [{y.min()}, {y.max()}], expected "
        f"[0, {num_classes - 1}] (1-based labels need -1)"
      )
    x = x.astype(np.float32)
    if not np.isfinite(x).all():
      raise ValueError(f"{path}: {x_key} holds non-finite values")
    return x, y.astype(np.int32)

  x, y = check("x", "y")
  if "x_test" in arrays:
    x_test, y_test = check("x_test", "y_test")
    return Dataset(x, y, x_test, y_test, num_classes=num_classes, name=name)
  train, test = _stratified_split(y, len(y) // 5, seed=0)
  return Dataset(
    x[train], y[train], x[test], y[test], num_classes=num_classes, name=name
  )
