"""`python tests/train_driver.py ARGS...` runs `python -m jaxswin.train ARGS...` with test hooks
on its training batches (the positions are 1-based `epoch:step` pairs, as the logs count):

    JAXSWIN_TEST_NAN_AT=2:1,2:2  puts a NaN pixel into those batches
    JAXSWIN_TEST_PAUSE_AT=2:2    before that batch, writes the file $JAXSWIN_TEST_MARKER and
                                 waits (up to 5 min) until the file is gone, so that a test can
                                 send a signal at a known step
"""

import os
import sys
import time
from pathlib import Path

import numpy as np

from jaxswin import train
from jaxswin.data import loader


def positions(name: str) -> set[tuple[int, int]]:
    text = os.environ.get(name, "")
    return {tuple(int(v) for v in item.split(":")) for item in text.split(",") if item}


def hooked(train_loader):
    nan_at, pause_at = positions("JAXSWIN_TEST_NAN_AT"), positions("JAXSWIN_TEST_PAUSE_AT")

    def batches(*args, **kwargs):
        epoch, start = kwargs["epoch"] + 1, kwargs.get("start_step", 0) + 1
        for step, batch in enumerate(train_loader(*args, **kwargs), start=start):
            if (epoch, step) in pause_at:
                marker = Path(os.environ["JAXSWIN_TEST_MARKER"])
                marker.write_text(f"{os.getpid()}\n")
                deadline = time.time() + 300
                while marker.exists() and time.time() < deadline:
                    time.sleep(0.02)
            if (epoch, step) in nan_at:
                batch = dict(batch, rgb=batch["rgb"].copy())
                batch["rgb"][0, 0, 0, 0] = np.nan
            yield batch

    return batches


if __name__ == "__main__":
    loader.train_loader = hooked(loader.train_loader)
    sys.exit(train.main(sys.argv[1:]))
