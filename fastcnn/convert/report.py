"""OptimizeReport: what fastcnn.optimize swapped in a model and what it left, and why."""

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Swap:
    """One change: the module at `path` ("" for the model itself), what ran there before
    (`source`: a class, or a chain of its submodules) and what runs now (`target`)."""
    path: str
    source: str
    target: str


@dataclass(frozen=True)
class Left:
    """A module (or chain of submodules) that stays as it was, and the reason."""
    path: str
    what: str
    reason: str


class OptimizeReport:
    """The table printed by print(model.fastcnn_report); `.swapped` and `.left` hold the
    rows (Swap, Left), `.to_dict()` the same as plain data."""

    def __init__(self, swapped=(), left=()):
        self.swapped, self.left = list(swapped), list(left)

    def __bool__(self):
        return bool(self.swapped or self.left)

    def to_dict(self):
        return {"swapped": [asdict(s) for s in self.swapped],
                "left": [asdict(s) for s in self.left]}

    def counts(self):
        """{target: how many} over the swaps."""
        counts = {}
        for s in self.swapped:
            counts[s.target] = counts.get(s.target, 0) + 1
        return counts

    def __str__(self):
        lines = [f"fastcnn.optimize: {len(self.swapped)} swapped, {len(self.left)} left"]
        if self.swapped:
            lines += ["", "swapped:"] + _table(
                ("module", "from", "to"), [(s.path or "(model)", s.source, s.target)
                                           for s in self.swapped])
        if self.left:
            lines += ["", "left:"] + _table(
                ("module", "what", "why"), [(s.path or "(model)", s.what, s.reason)
                                            for s in self.left])
        return "\n".join(lines)

    __repr__ = __str__


def _table(header, rows):
    widths = [max(len(str(r[i])) for r in (header, *rows)) for i in range(len(header) - 1)]
    def line(r):
        return "  " + "  ".join([str(c).ljust(w) for c, w in zip(r, widths)] + [str(r[-1])])
    return [line(header)] + [line(r) for r in rows]
