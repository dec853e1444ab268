"""Writing a figure: HTML (plotly.js inlined, shared from a file beside it, or from plotly's CDN),
or a static image by extension through plotly's own exporter (kaleido, which drives a Chrome or
Chromium it finds on the machine); checked before any work, written whole or not at all."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import plotly.graph_objects as go

from alphasel.atomic import replacing, write_text
from alphasel.errors import PlotError

#: File types save_figure writes; all but HTML need a static exporter (kaleido).
STATIC_SUFFIXES = (".png", ".jpg", ".jpeg", ".svg", ".pdf", ".webp")
#: The formats a study report also writes its figures in (``--format``).
STATIC_FORMATS = ("png", "svg", "pdf")
#: Where a page finds plotly.js (``--plotlyjs``): inlined in each page (one self-contained
#: file each), one shared ``plotly.min.js`` beside the pages, or plotly's CDN (needs internet).
PLOTLYJS_MODES = ("inline", "directory", "cdn")
#: The shared copy of plotly.js that ``directory`` pages load.
PLOTLYJS_FILE = "plotly.min.js"


def static_exporter_available() -> bool:
    """Whether plotly can write PNG/SVG/PDF here (it needs the kaleido package)."""
    return importlib.util.find_spec("kaleido") is not None


def browser_for_static_export() -> str | None:
    """The Chrome or Chromium kaleido would drive (its own search: a downloaded copy, then the
    browsers on the PATH and their usual places, e.g. Debian's /usr/bin/chromium), or None."""
    if not static_exporter_available():
        return None
    from choreographer.browsers.chromium import Chromium

    return Chromium.find_browser(skip_local=False)


def check_static_export(what: str) -> None:
    """Raise :class:`PlotError` unless static images can be written here (kaleido and a
    browser for it); ``what`` names what asked, e.g. ``--format png``."""
    if not static_exporter_available():
        raise PlotError(f"{what} needs plotly's static image exporter: `pip install kaleido` "
                        "(or write .html, which needs nothing more)")
    if browser_for_static_export() is None:
        raise PlotError(f"{what}: kaleido needs Chrome or Chromium and finds neither: install "
                        "one (Debian: apt-get install chromium) or set BROWSER_PATH to it; or "
                        "write .html")


def check_output_path(path: str | Path) -> Path:
    """Raise :class:`PlotError` unless ``path`` is a file type save_figure can write here."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix != ".html" and suffix not in STATIC_SUFFIXES:
        raise PlotError(f"cannot write a figure to '{path}': use a file ending in .html "
                        f"(or {', '.join(STATIC_SUFFIXES)} with kaleido installed)")
    if suffix in STATIC_SUFFIXES:
        check_static_export(f"writing '{path}'")
    return path


def check_plotlyjs(mode: str) -> str:
    """``mode`` if it is one of :data:`PLOTLYJS_MODES`, else a :class:`PlotError`."""
    if mode not in PLOTLYJS_MODES:
        raise PlotError(f"--plotlyjs {mode}: use one of {', '.join(PLOTLYJS_MODES)}")
    return mode


def write_plotlyjs(folder: Path) -> Path:
    """The shared plotly.js that ``directory`` pages in and under ``folder`` load (rewritten
    only when it differs, e.g. after a plotly upgrade)."""
    from plotly.offline import get_plotlyjs

    path = Path(folder) / PLOTLYJS_FILE
    text = get_plotlyjs()
    if not path.is_file() or path.read_text(encoding="utf-8") != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text(path, text)
    return path


def save_figure(fig: go.Figure, path: str | Path, plotlyjs: bool | str = True) -> Path:
    """Write ``fig`` to ``path``: HTML, or a static image by extension when kaleido and a browser
    are there. ``plotlyjs`` (HTML): True inlines plotly.js (the page works offline, alone),
    ``"cdn"`` loads it from plotly's CDN, a path ending in .js loads that file (relative to the
    page). No partial file is left on failure."""
    path = check_output_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path) as tmp:
        if path.suffix.lower() == ".html":
            fig.write_html(tmp, include_plotlyjs=plotlyjs, full_html=True)
        else:
            try:
                fig.write_image(tmp, format=path.suffix.lower().lstrip("."))
            except (RuntimeError, ValueError, OSError) as err:
                raise PlotError(f"could not write '{path}' with kaleido ({err}): check the "
                                "browser it drives (BROWSER_PATH), or write .html") from err
    return path
