"""Progress lines: redrawn in place on a terminal, a line per tenth else.

  bar = progress.Progress(len(images), label='scoring', unit='images')
  for chunk in chunks:
    ...
    bar.update(len(chunk))   # Or bar.show(done): the count itself.

On a terminal (the stream's `isatty()`) one line is redrawn with `\r`:
`scoring [#########        ] 3000/10000 images (30%), 812 images/s, ETA 9s`.
Elsewhere (a file, a pipe, CI) nothing is redrawn: a line is written when
the count enters a new tenth of the total, so at most 11 lines. The rate
counts from the first update, so that a first call's compilation does not
count. A bar only formats what it is given: callers update it where they
already hold host values (the training loop: after its metrics sync).

`end_lines()` ends a line drawn in place, so that whatever is printed next
(an error, a summary) starts on a line of its own.
"""
import sys
import time
from typing import Callable, Optional, TextIO

_WIDTH = 30  # Characters of the bar.
_DRAWN: set = set()  # Bars with a line drawn in place and not ended.


def duration(seconds: float) -> str:
  """`42s`, `3m05s`, `2h07m`."""
  s = max(0, int(round(seconds)))
  if s < 60:
    return f'{s}s'
  if s < 3600:
    return f'{s // 60}m{s % 60:02d}s'
  return f'{s // 3600}h{s % 3600 // 60:02d}m'


def rate_text(rate: Optional[float]) -> str:
  """A rate with 3 significant digits or so; `--` when unknown."""
  if rate is None:
    return '--'
  if rate >= 100:
    return f'{rate:.0f}'
  return f'{rate:.1f}' if rate >= 10 else f'{rate:.2f}'


def line(label: str, done: int, total: int, unit: str,
         rate: Optional[float]) -> str:
  """`label [####      ] done/total unit (p%), r unit/s, ETA t`."""
  total = max(1, total)
  done_in = min(max(done, 0), total)
  bar = '#' * (_WIDTH * done_in // total)
  eta = duration((total - done_in) / rate) if rate else '--'
  return (f'{label} [{bar:<{_WIDTH}}] {done}/{total} {unit} '
          f'({100 * done_in // total}%), {rate_text(rate)} {unit}/s, '
          f'ETA {eta}')


class Progress:
  """A progress line on `stream` (default: stderr); see the module doc."""

  def __init__(self, total: int, enabled: bool = True,
               stream: Optional[TextIO] = None, *, label: str = 'scoring',
               unit: str = 'images', done: int = 0,
               tty: Optional[bool] = None,
               clock: Callable[[], float] = time.monotonic):
    self.total, self.enabled, self.done = total, enabled, done
    self.label, self.unit = label, unit
    self.stream = stream or sys.stderr
    self.tty = (bool(getattr(self.stream, 'isatty', lambda: False)())
                if tty is None else tty)
    self._clock = clock
    self._start: Optional[tuple[float, int]] = None  # (time, done) first.
    self._tenth: Optional[int] = None  # Of the last line (not a terminal).
    self._drawn = 0  # Length of the line drawn in place.

  def rate(self, now: float) -> Optional[float]:
    """Units per second since the first update (None: not known yet)."""
    t0, d0 = self._start
    if self.done > d0 and now > t0:
      return (self.done - d0) / (now - t0)
    return None

  def update(self, n: int, label: Optional[str] = None) -> None:
    """Counts `n` more units."""
    self.show(self.done + n, label)

  def show(self, done: int, label: Optional[str] = None) -> None:
    """Sets the count to `done` (and the label) and shows it if due."""
    self.done = done
    if label is not None:
      self.label = label
    if not self.enabled:
      return
    now = self._clock()
    if self._start is None:
      self._start = (now, done)
    text = line(self.label, done, self.total, self.unit, self.rate(now))
    if not self.tty:
      tenth = 10 * min(done, self.total) // max(1, self.total)
      if tenth != self._tenth:
        self._tenth = tenth
        self.stream.write(text + '\n')
        self.stream.flush()
      return
    self.stream.write('\r' + text.ljust(self._drawn))
    self._drawn = len(text)
    _DRAWN.add(self)
    if done >= self.total:
      self.end_line()
    self.stream.flush()

  def clear(self) -> None:
    """Erases a line drawn in place (the next update draws it again)."""
    if self._drawn:
      self.stream.write('\r' + ' ' * self._drawn + '\r')
      self.stream.flush()
      self._drawn = 0
    _DRAWN.discard(self)

  def end_line(self) -> None:
    """Ends a line drawn in place: what comes next starts below it."""
    if self._drawn:
      self.stream.write('\n')
      self.stream.flush()
      self._drawn = 0
    _DRAWN.discard(self)


def end_lines() -> None:
  """Ends every line drawn in place (before an error line, say)."""
  for bar in list(_DRAWN):
    bar.end_line()


def clear_lines() -> None:
  """Erases every line drawn in place (before a line of text)."""
  for bar in list(_DRAWN):
    bar.clear()
