"""Progress on the console for the stages' long loops: one bar helper, one policy.

`with progress(total, description, unit) as bar:` is the bar every stage draws (a tqdm bar;
`bar.update(n)` advances it). Its contract:

- it writes to `sys.stderr` as it is when the bar is made (a redirected stderr, or pytest's
  `capsys`, sees it), whether or not that is a terminal, as tqdm does;
- it follows the terminal's width (`dynamic_ncols`) and is erased when it closes (`leave`
  False): what stays on the console is the stage's log lines, which give the counts reached;
- while it is drawn, the `nexus` loggers' console lines are written above it (the bar is
  cleared, the line written, the bar drawn again), so neither tears the other;
- only rank 0 draws it under torchrun (the other ranks' bars would repeat it), and none is
  drawn with `show=False`; tqdm's environment defaults for what is not set here apply (read
  when tqdm is first imported: `TQDM_MININTERVAL=0` redraws on every update);
- a worker process whose stderr is the console draws no bar of its own: it reports its counts
  to its parent, which draws the one bar.

`quiet_library_bars()` turns transformers' own bars ("Loading weights", "Writing model
shards") off for a block: they repeat for every model loaded and tear the stage's bar.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TextIO

from nexus_kernel.run.distributed import world
from nexus_kernel.run.logs import LOGGER_NAME


@contextmanager
def progress(total: int | None, description: str, unit: str = "step", *, show: bool = True,
             leave: bool = False) -> Iterator[Any]:
    """A bar over `total` `unit`s labelled `description`, drawn as the module docstring says
    (`leave=True` keeps it as the loop's summary line); closed when the block ends."""
    import sys

    from tqdm import tqdm

    stream = sys.stderr
    bar = tqdm(total=total, desc=description, unit=unit, file=stream, dynamic_ncols=True, leave=leave,
               disable=not (show and world().main))
    try:
        if bar.disable:
            yield bar
        else:
            with _lines_above_bars(stream):
                yield bar
    finally:
        bar.close()


class _AboveBars:
    """A console stream whose writes go through `tqdm.write`: above the bars drawn on it."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        from tqdm import tqdm

        tqdm.write(text, file=self.stream, end="")
        return len(text)

    def flush(self) -> None:
        self.stream.flush()


@contextmanager
def _lines_above_bars(stream: TextIO) -> Iterator[None]:
    """The `nexus` console handlers writing to `stream` write above its bars for the block
    (an outer bar's block already has them so)."""
    swapped = [handler for handler in logging.getLogger(LOGGER_NAME).handlers
               if type(handler) is logging.StreamHandler and handler.stream is stream]
    for handler in swapped:
        handler.setStream(_AboveBars(stream))  # type: ignore[arg-type]
    try:
        yield
    finally:
        for handler in swapped:
            handler.setStream(stream)


@contextmanager
def quiet_library_bars() -> Iterator[None]:
    """transformers' progress bars off (it has no per-call switch), restored afterwards."""
    from transformers.utils import logging as transformers_logging

    was_on = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_on:
            transformers_logging.enable_progress_bar()
