"""HTML building blocks of :mod:`miajax.html_report`: escaping, number
formats, tables and inline PNG images (private)."""

from __future__ import annotations

import base64
import html
import io
import json
import math
import numbers

import numpy as np

from miajax import report

DASH = "\u2013"  # a missing or unresolvable value
_MIN_SIDE = 96  # images are upscaled (nearest) to at least this many pixels
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def escape(value) -> str:
  return html.escape(str(value), quote=True)


def get(obj, *keys):
  """``obj[k0][k1]...``, None where a level is missing or not a dict."""
  for key in keys:
    if not isinstance(obj, dict):
      return None
    obj = obj.get(key)
  return obj


def number(value) -> float | None:
  if isinstance(value, bool) or not isinstance(value, numbers.Real):
    return None
  value = float(value)
  return None if math.isnan(value) else value


def fmt(value, ci=None, *, rate: bool = False) -> str:
  """``0.612 [0.581, 0.640]``, as the printed table writes it; the dash for None, NaN or a non-number."""
  bounds = None
  if isinstance(ci, (list, tuple)) and len(ci) == 2:
    bounds = tuple(number(c) for c in ci)
    bounds = None if None in bounds else bounds
  return report.format_value(number(value), bounds, rate=rate, missing=DASH)


def cell(value) -> str:
  """A generic table cell's text (escaped later)."""
  if value is None:
    return DASH
  if isinstance(value, bool):
    return "yes" if value else "no"
  if isinstance(value, numbers.Integral):
    return str(int(value))
  if isinstance(value, numbers.Real):
    value = float(value)
    return DASH if math.isnan(value) else format(value, ".4g")
  if isinstance(value, (dict, list, tuple)):
    text = json.dumps(value, default=str, separators=(", ", ": "))
    return text if len(text) <= 200 else text[:199] + "\u2026"
  return str(value)


def _td(text: str, numeric: bool = False) -> str:
  if not numeric:
    return f"<td>{escape(text)}</td>"
  # "0.612 [0.581, 0.640]" may break before its interval, nowhere else.
  value, sep, ci = text.partition(" [")
  ci = f' <span class="ci">[{escape(ci)}</span>' if sep else ""
  return f'<td class="num"><span>{escape(value)}</span>{ci}</td>'


def table(header, rows, *, row_classes=None, table_id=None) -> str:
  """An HTML table: ``rows`` hold ``(text, numeric)`` cells."""
  head = "".join(f"<th>{escape(h)}</th>" for h in header)
  body = []
  for i, row in enumerate(rows):
    cls = row_classes[i] if row_classes and row_classes[i] else None
    attr = f' class="{escape(cls)}"' if cls else ""
    body.append(f"<tr{attr}>" + "".join(_td(*c) for c in row) + "</tr>")
  id_attr = f' id="{escape(table_id)}"' if table_id else ""
  return (
    f'<div class="scroll"><table{id_attr}><thead><tr>{head}</tr></thead>'
    "<tbody>\n" + "\n".join(body) + "\n</tbody></table></div>"
  )


def generic_table(rows, *, highlight=(), table_id=None) -> str:
  """Row dicts as a table; its columns are their keys in order of appearance."""
  rows = [r if isinstance(r, dict) else {"value": r} for r in rows]
  columns = list(dict.fromkeys(k for r in rows for k in r))
  cells = [
    [
      (cell(r.get(c)), number(r.get(c)) is not None) if c in r else ("", False)
      for c in columns
    ]
    for r in rows
  ]
  classes = ["chosen" if i in highlight else None for i in range(len(rows))]
  return table(columns, cells, row_classes=classes, table_id=table_id)


def facts(pairs) -> str:
  items = [(k, v) for k, v in pairs if v is not None and v != ""]
  if not items:
    return ""
  inner = "".join(
    f"<dt>{escape(k)}</dt><dd>{escape(cell(v))}</dd>" for k, v in items
  )
  return f'<dl class="facts">{inner}</dl>'


def png_data_uri(png: bytes) -> str:
  """``data:image/png;base64,...`` for PNG bytes (checked by their signature)."""
  png = bytes(png)
  if not png.startswith(_PNG_MAGIC):
    raise ValueError("not PNG data: the bytes lack the PNG signature")
  return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def image_array(image, where: str) -> np.ndarray:
  array = np.asarray(image, dtype=np.float64)
  if array.ndim == 3 and array.shape[-1] == 1:
    array = array[..., 0]
  if array.ndim not in (2, 3) or (
    array.ndim == 3 and array.shape[-1] not in (3, 4)
  ):
    raise ValueError(
      f"{where}: an image must be [H, W] or [H, W, C] with C in 1, 3, 4, "
      f"got shape {np.shape(image)}"
    )
  if min(array.shape[:2]) < 1:
    raise ValueError(f"{where}: an image has no pixels, shape {array.shape}")
  return array


def image_png(array: np.ndarray, low: float, high: float) -> bytes:
  """RGB(A) PNG bytes: ``[low, high]`` mapped to black..white, upscaled."""
  from matplotlib import image as mpl_image

  scaled = (array - low) / (high - low) if high > low else np.zeros_like(array)
  scaled = np.nan_to_num(np.clip(scaled, 0.0, 1.0), nan=0.0)
  pixels = np.round(scaled * 255).astype(np.uint8)
  if pixels.ndim == 2:  # grayscale
    pixels = np.repeat(pixels[..., None], 3, axis=-1)
  factor = max(1, math.ceil(_MIN_SIDE / max(pixels.shape[:2])))
  pixels = pixels.repeat(factor, axis=0).repeat(factor, axis=1)
  buffer = io.BytesIO()
  mpl_image.imsave(buffer, pixels, format="png")
  return buffer.getvalue()
