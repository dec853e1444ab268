"""Writing a figure: self-contained HTML (plotly.js inlined, works offline), or a static image
by extension when kaleido is installed; checked before any work, written whole or not at all."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import plotly.graph_objects as go

from alphasel.atomic import replacing
from alphasel.errors import PlotError

#: File types save_figure writes; all but HTML need a static exporter (kaleido).
STATIC_SUFFIXES = (".png", ".jpg", ".jpeg", ".svg", ".pdf", ".webp")


def static_exporter_available() -> bool:
    """Whether plotly can write PNG/SVG/PDF here (it needs the kaleido package)."""
    return importlib.util.find_spec("kaleido") is not None


def check_output_path(path: str | Path) -> Path:
    """Raise :class:`PlotError` unless ``path`` is a file type save_figure can write here."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix != ".html" and suffix not in STATIC_SUFFIXES:
        raise PlotError(f"cannot write a figure to '{path}': use a file ending in .html "
                        f"(or {', '.join(STATIC_SUFFIXES)} with kaleido installed)")
    if suffix in STATIC_SUFFIXES and not static_exporter_available():
        raise PlotError(f"writing '{path}' needs a static image exporter: `pip install kaleido` "
                        "(or write .html, which needs nothing more)")
    return path


def save_figure(fig: go.Figure, path: str | Path) -> Path:
    """Write ``fig`` to ``path``: self-contained HTML (plotly.js inlined, works offline), or a
    static image by extension when kaleido is installed. No partial file is left on failure."""
    path = check_output_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path) as tmp:
        if path.suffix.lower() == ".html":
            fig.write_html(tmp, include_plotlyjs=True, full_html=True)
        else:
            try:
                fig.write_image(tmp, format=path.suffix.lower().lstrip("."))
            except (RuntimeError, ValueError, OSError) as err:
                raise PlotError(f"could not write '{path}' with kaleido ({err}): kaleido needs "
                                "Chrome, which `plotly_get_chrome` installs; or write .html") \
                    from err
    return path
