"""``estimate``: how long pulling an image takes (:mod:`modelimage.pulltime`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..pulltime import ProbeNeedsTarget
from ..pulltime import Report as EstimateReport
from ._common import PathLike

__all__ = ["EstimateReport", "ProbeNeedsTarget", "estimate"]


def estimate(source: PathLike, *, bandwidth: float | None = None, probe: bool = False,
             disk_dir: PathLike | None = None, engine: str = "containerd", concurrency: int | None = None,
             max_layer_size: int | None = None, config: PathLike | None = None,
             insecure: Sequence[str] = ()) -> EstimateReport:
    """Estimate pulling ``source`` (a model, planned; or an image REF,
    ``oci:DIR[:TAG]`` or ``oci-archive:FILE[:TAG]``) with ``engine``
    (``containerd``, ``podman``, ``docker``, ``modelimage``) over
    ``bandwidth`` bytes/s (default: 100 Mbit/s, 1 Gbit/s and 10 Gbit/s),
    with this machine's calibration of the engine when one is stored
    (``estimate --calibrate``), else the built-in costs and their range.
    ``probe=True`` measures the download speed from the registry and the
    disk at ``disk_dir``. Returns :class:`~modelimage.pulltime.Report` (an
    estimate per link: seconds, range, phases, bytes on disk; the storage
    options). Raises :class:`ProbeNeedsTarget` (``probe`` without a registry
    or a bandwidth), the errors of :func:`inspect` and registry errors."""
    from ..pulltime import estimate_source

    return estimate_source(str(source), engine=engine, bandwidth_bps=bandwidth, probe=probe,
                           disk_dir=Path(disk_dir) if disk_dir is not None else None, concurrency=concurrency,
                           config=Path(config) if config is not None else None, max_layer_size=max_layer_size,
                           insecure=tuple(insecure))
