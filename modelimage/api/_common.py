"""What the API functions share: the progress convention, model options."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

from ..job import Options

Progress = Callable[[int, str], AbstractContextManager[Callable[[int], None] | None]]
PathLike = str | os.PathLike


@contextmanager
def no_progress(total: int, label: str) -> Iterator[None]:
    yield None


def model_options(config: PathLike | None, include: Sequence[str], exclude: Sequence[str], name: str | None,
             **kw: Any) -> Options:
    return Options(config=Path(config) if config is not None else None, name=name, include=tuple(include),
                   exclude=tuple(exclude), **kw)
