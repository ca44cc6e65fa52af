"""A progress bar over an epoch's batches: tqdm's when tqdm is installed, else a line every
quarter of the epoch."""

import sys


def progress_bar(iterable, total, description):
    """iterable wrapped in a progress display with set_postfix_str(text) and close()."""
    try:
        from tqdm import tqdm
    except ImportError:
        return PlainProgress(iterable, total, description)
    return tqdm(iterable, total=total, desc=description, leave=False, dynamic_ncols=True)


class PlainProgress:
    """Prints "description: done/total text" to stderr after each quarter of the batches."""

    def __init__(self, iterable, total, description, file=None):
        self.iterable, self.total, self.description = iterable, total, description
        self.file = file or sys.stderr
        self.postfix = ""

    def __iter__(self):
        marks = {max(1, round(self.total * q / 4)) for q in (1, 2, 3, 4)}
        for done, item in enumerate(self.iterable, 1):
            yield item
            if done in marks:
                print(f"{self.description}: {done}/{self.total} {self.postfix}".rstrip(),
                      file=self.file, flush=True)

    def set_postfix_str(self, text):
        self.postfix = text

    def close(self):
        pass
