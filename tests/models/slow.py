"""A model that stops and waits at a chosen moment, so tests can send a real signal to a real `scaffold new`.

SCAFFOLD_TEST_PAUSE=import|init|forward picks the moment; the model writes its pid to SCAFFOLD_TEST_READY and
waits there (until the file SCAFFOLD_TEST_GO exists, if set; two minutes at most). SCAFFOLD_TEST_MKDIR=PATH
makes forward create PATH (a directory with a file in it), as another program would while the export runs.
"""

import os
import time
from pathlib import Path

import torch


def _pause(moment: str) -> None:
    if os.environ.get("SCAFFOLD_TEST_PAUSE") == moment:
        Path(os.environ["SCAFFOLD_TEST_READY"]).write_text(str(os.getpid()))
        go = os.environ.get("SCAFFOLD_TEST_GO")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (go and Path(go).exists()):
            time.sleep(0.05)


_pause("import")


class Slow(torch.nn.Module):
    scaffold_inputs = ["x=2x3"]

    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(3, 3)
        _pause("init")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _pause("forward")
        target = os.environ.get("SCAFFOLD_TEST_MKDIR")
        if target and not Path(target).exists():
            Path(target).mkdir(parents=True)
            (Path(target) / "theirs.txt").write_text("made while scaffold exported")
        return self.lin(x)
