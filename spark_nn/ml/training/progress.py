"""A fit's progress on the driver's terminal."""
import sys
import time


class Progress:
    """A one-line progress bar on the driver's stderr: steps, loss, elapsed time and ETA."""

    def __init__(self, total, label, enabled, stream=None):
        self.total, self.label, self.enabled = max(int(total), 1), label, enabled
        self.stream = stream or sys.stderr
        self.done, self.t0, self.shown = 0, time.perf_counter(), 0.0
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())

    def update(self, steps, text=""):
        self.done = min(self.done + steps, self.total)
        now = time.perf_counter()
        # redraw at most twice a second, and only on a terminal (logs get the per-epoch lines)
        if not (self.enabled and self.tty) or (now - self.shown < 0.5 and self.done < self.total):
            return
        self.shown = now
        elapsed = now - self.t0
        eta = elapsed / self.done * (self.total - self.done)
        filled = int(24 * self.done / self.total)
        bar = "#" * filled + "." * (24 - filled)
        self.stream.write(f"\r{self.label} [{bar}] {self.done}/{self.total} {text} "
                          f"{elapsed:.0f}s elapsed, ETA {eta:.0f}s ")
        self.stream.flush()

    def message(self, text):
        if self.enabled:
            self.stream.write("\r" + text + " " * 20 + "\n")
            self.stream.flush()
