"""What a training run shows on the console: one progress bar for training with the latest loss
and eval loss on it, each evaluation's results as they come (both drawn by
:class:`alphasel.training.callbacks.ConsoleCallback`), and nothing of the libraries' own
chatter (their progress bars, log lines and warnings) unless asked for (``verbose``). This
module imports none of those libraries until it is used.

Warnings that concern what alphasel itself chose are resolved where it chooses (the arguments
it passes, what it imports); what stays is the libraries' internal business, which
``--verbose`` shows. Warnings raised from alphasel's own code, about the user's input, always
show.
"""

from __future__ import annotations

import contextvars
import io
import logging
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stderr

#: The libraries whose own output is held back unless ``verbose``.
LIBRARIES = ("transformers", "peft", "trl", "accelerate", "datasets", "torch", "bitsandbytes",
             "huggingface_hub")
_LIBRARY_MODULES = r"(" + "|".join(LIBRARIES) + r")(\..*)?$"
# Whether the libraries' output is held back here (inside library_output, not verbose).
_HELD_BACK = contextvars.ContextVar("alphasel_library_output_held_back", default=False)


def keep_bitsandbytes_unloaded() -> None:
    """Keep bitsandbytes from being imported in this process: PEFT imports it whenever it is
    installed (and it logs about a kernel package it looks for), though only a 4-bit base
    (--quantize 4bit) needs it. A ``None`` entry in ``sys.modules`` makes ``import`` fail and
    ``importlib.util.find_spec`` report the package absent, so PEFT and transformers treat it as
    not installed. Call it only in a process that trains once, without 4-bit, before anything
    imports PEFT (the CLI and the study's worker do)."""
    sys.modules.setdefault("bitsandbytes", None)  # type: ignore[arg-type]


@contextmanager
def library_output(verbose: bool = False) -> Iterator[None]:
    """Within the block: the libraries' log messages below errors, their progress bars and
    their warnings are held back, unless ``verbose``. Everything is restored afterwards."""
    if verbose:
        yield
        return
    import datasets
    import transformers

    loggers = [logging.getLogger(name) for name in LIBRARIES]
    levels = [logger.level for logger in loggers]
    verbosity = transformers.utils.logging.get_verbosity()
    bars = transformers.utils.logging.is_progress_bar_enabled()
    dataset_bars = datasets.is_progress_bar_enabled()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    held = _HELD_BACK.set(True)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", module=_LIBRARY_MODULES)
            yield
    finally:
        _HELD_BACK.reset(held)
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
        transformers.utils.logging.set_verbosity(verbosity)
        if bars:
            transformers.utils.logging.enable_progress_bar()
        if dataset_bars:
            datasets.enable_progress_bars()


@contextmanager
def library_bars() -> Iterator[None]:
    """Around a library call that draws a progress bar of its own, ignoring the libraries'
    switches (transformers' GGUF loader does): its stderr goes nowhere while the libraries'
    output is held back. Errors still surface as exceptions."""
    if not _HELD_BACK.get():
        yield
        return
    with redirect_stderr(io.StringIO()):
        yield
