"""Render a local HTML file with a headless Chromium: a screenshot or the DOM.

Used to check :func:`miajax.html_report.write_html_report`'s pages in a
real browser (tests, docs). Needs a Chromium or Chrome binary on ``PATH``
(Debian: ``apt-get install chromium``); nothing is downloaded. The browser
runs with a throwaway profile, no GPU and no sandbox (root in containers),
and only ever opens the ``file://`` URL it is given.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import tempfile

__all__ = ["BROWSERS", "dump_dom", "find_browser", "screenshot_html"]

# Binary names tried in order by find_browser.
BROWSERS = (
  "chromium",
  "chromium-browser",
  "google-chrome",
  "google-chrome-stable",
)


def find_browser() -> str | None:
  """The path of the first of :data:`BROWSERS` on ``PATH``, or None."""
  for name in BROWSERS:
    found = shutil.which(name)
    if found:
      return found
  return None


def _browser(browser) -> str:
  if browser is not None:
    found = shutil.which(os.fspath(browser))
    if not found:
      raise FileNotFoundError(f"browser {os.fspath(browser)!r} not found")
    return found
  found = find_browser()
  if not found:
    raise FileNotFoundError(
      "no headless browser found: none of "
      + ", ".join(BROWSERS)
      + " is on PATH (Debian: apt-get install chromium)"
    )
  return found


def _run(browser, args, html_path, timeout: float) -> str:
  html_path = pathlib.Path(html_path).resolve()
  if not html_path.is_file():
    raise FileNotFoundError(f"no such HTML file: {html_path}")
  with tempfile.TemporaryDirectory(prefix="miajax-browser-") as profile:
    command = [
      _browser(browser),
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-dev-shm-usage",
      "--no-first-run",
      "--hide-scrollbars",
      f"--user-data-dir={profile}",
      *args,
      html_path.as_uri(),
    ]
    try:
      done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
      )
    except subprocess.TimeoutExpired as e:
      raise TimeoutError(
        f"{command[0]} did not finish within {timeout} s"
      ) from e
  if done.returncode != 0:
    raise RuntimeError(
      f"{command[0]} exited with {done.returncode}: {done.stderr[-2000:]}"
    )
  return done.stdout


def screenshot_html(
  html_path,
  png_path,
  *,
  width: int = 1200,
  height: int = 1600,
  browser=None,
  timeout: float = 120.0,
) -> pathlib.Path:
  """Write a PNG screenshot of ``html_path`` as a headless browser shows it.

  Args:
    html_path: a local HTML file.
    png_path: the PNG to write (replaced if it exists).
    width, height: the window size in CSS pixels.
    browser: the browser binary (a name on ``PATH`` or a path); default:
      :func:`find_browser`.
    timeout: seconds before the browser is killed (``TimeoutError``).

  Returns:
    ``png_path`` as a ``pathlib.Path``.

  Raises:
    FileNotFoundError: no browser (or no HTML file) found.
    RuntimeError: the browser failed or wrote no screenshot.
  """
  png_path = pathlib.Path(png_path).resolve()
  png_path.unlink(missing_ok=True)
  _run(
    browser,
    [f"--screenshot={png_path}", f"--window-size={int(width)},{int(height)}"],
    html_path,
    timeout,
  )
  if not png_path.is_file() or png_path.stat().st_size == 0:
    raise RuntimeError(f"the browser wrote no screenshot to {png_path}")
  return png_path


def dump_dom(html_path, *, browser=None, timeout: float = 120.0) -> str:
  """The serialised DOM of ``html_path`` after it loaded and its scripts ran.

  Same arguments as :func:`screenshot_html`; returns the HTML text.
  """
  return _run(browser, ["--dump-dom"], html_path, timeout)
