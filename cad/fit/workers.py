"""The fit's evaluations on build workers: its batches at once, and a state started before the search asks for it.

A serial search (the pattern search's next probe) leaves every worker but one idle. So while the search waits for
one state, an idle worker starts the state it would ask next if that one misses (the same coordinate moved the
other way). The search itself does not change: a state started ahead counts as an evaluation only when the search
asks for it (its answer is then ready, or nearly), so the states asked, the count and the answer are the serial
fit's; one never asked was a build on a worker that would have idled (``wasted``).
"""
from __future__ import annotations

from collections import OrderedDict

KEPT = 8  # answers started ahead and not asked yet, kept (oldest dropped): a search seldom comes back to them


class Workers:
    """``submit(values, options) -> Future`` over ``count`` workers, shared by every stage of one fit; once
    ``cancel`` (anything with ``is_set()``) is set nothing more is started ahead."""

    def __init__(self, submit, count: int, cancel=None):
        self.submit, self.count, self.cancel = submit, count, cancel
        self.ahead: OrderedDict = OrderedDict()  # (stage index, state key) -> Future, started ahead, not asked
        self.started_ahead = self.used_ahead = self.dropped_ahead = 0

    @property
    def wasted(self) -> int:
        """Builds of states started ahead that the search did not ask for (so far; cancelled in time: none)."""
        return self.started_ahead - self.used_ahead - self.dropped_ahead

    def running(self, asked) -> int:
        """Builds running: the ``asked`` futures and those started ahead."""
        return sum(not f.done() for f in [*asked, *self.ahead.values()])

    def answers(self, stage: int, options, items, ahead=()) -> list:
        """The answers of ``items`` ((key, values) the search asks for in stage ``stage``, whose objective
        options are ``options``), all started at once (one per worker: the caller hands over at most ``count``);
        then each of ``ahead`` (the same form) is started if a worker is still free. Raises what the objective
        raised for an asked state; an unasked one's failure is dropped."""
        futures = []
        for key, values in items:
            future = self.ahead.pop((stage, key), None)
            if future is None:
                future = self.submit(values, options)
            else:
                self.used_ahead += 1
            futures.append(future)
        asked = {key for key, _ in items}
        for key, values in ahead if self.cancel is None or not self.cancel.is_set() else ():
            if self.running(futures) >= self.count:
                break
            if key not in asked and (stage, key) not in self.ahead:
                self.ahead[(stage, key)] = self.submit(values, options)
                self.started_ahead += 1
        while len(self.ahead) > KEPT:
            self._drop(self.ahead.popitem(last=False)[1])
        return [future.result() for future in futures]

    def _drop(self, future) -> None:
        if future.cancel():
            self.dropped_ahead += 1

    def close(self) -> None:
        """Cancel what was started ahead and has not begun (a running build finishes on its worker)."""
        for future in self.ahead.values():
            self._drop(future)
        self.ahead.clear()
