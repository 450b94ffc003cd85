"""What every command shares: exit codes, a progress bar on stderr, loading the model with a one-line error."""

from __future__ import annotations

import sys

EXIT_OK, EXIT_FAIL, EXIT_BAD_INPUT = 0, 1, 2


class ProgressBar:
    """A plain progress bar on stderr (redrawn in place on a terminal, a line per 10% otherwise)."""

    def __init__(self, total: int, label: str):
        self.total, self.label, self.done, self._last_decile = max(total, 1), label, 0, -1
        self.tty = sys.stderr.isatty()

    def step(self, n: int = 1) -> None:
        self.done += n
        frac = min(self.done / self.total, 1.0)
        bar = "#" * int(frac * 30)
        if self.tty:
            sys.stderr.write(f"\r{self.label} [{bar:<30}] {self.done}/{self.total}")
            if self.done >= self.total:
                sys.stderr.write("\n")
        elif int(frac * 10) != self._last_decile:
            self._last_decile = int(frac * 10)
            sys.stderr.write(f"{self.label} [{bar:<30}] {self.done}/{self.total}\n")
        sys.stderr.flush()


def load_scorer(command: str, model: str | None, device: str, precision: str = "auto"):
    """The --model file (else the default model) on the device; None after a one-line message."""
    from cxr_viewer.ai.inference import Scorer
    from cxr_viewer.ai.model import ModelFileError
    from cxr_viewer.ai.model_store import default_model_path

    model_path = model or default_model_path()
    if not model_path:
        print(f"cxr-viewer {command}: no model: pass --model FILE.safetensors (none is installed in models/)",
              file=sys.stderr)
        return None
    try:
        return Scorer.from_file(model_path, device, precision)
    except (ModelFileError, ValueError) as exc:  # unreadable/refused file, or a device not available here
        print(f"cxr-viewer {command}: cannot use model {model_path}: {exc}", file=sys.stderr)
        return None
    except MemoryError:
        print(f"cxr-viewer {command}: cannot use model {model_path}: out of memory while loading it", file=sys.stderr)
        return None


def run_with_bar(gen, on_event=None):
    """Drive a core task generator from the command line with a progress bar on stderr."""
    from cxr_viewer.common.tasks import Progress

    bars: dict[str, ProgressBar] = {}
    while True:
        try:
            event = next(gen)
        except StopIteration as stop:
            return stop.value
        if isinstance(event, Progress) and event.total:
            bar = bars.setdefault(event.stage, ProgressBar(event.total, event.stage))
            bar.step(event.done - bar.done)
        if on_event is not None:
            on_event(event)
