"""Which backend and precision each device embeds with, and the int8 gate figures that decided it, as last
calibrated for a model: written by the calibrator beside its cache, read by ``ragline status`` and the run
artifact without loading a model or importing torch.

The calibration cache itself is keyed by everything a choice depends on (torch version, threads, ...), which a
reader cannot know without the runtime; this record is keyed by the configured model alone and says what the
last worker of each device chose.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from embedding.devices import Device
    from embedding.model import EmbeddingSettings
    from embedding.precision import PrecisionChoice

log = logging.getLogger(__name__)

_write_lock = threading.Lock()


def backend_of(precision: str) -> str:
    """The software that computes ``precision``'s vectors."""
    return "openvino-int8" if precision == "int8" else "torch"


@dataclass(frozen=True)
class Int8Gates:
    """int8's figures against float32 on the calibration set, and whether they passed (chosen or not)."""

    recall_at_5: float
    recall_at_5_float32: float
    top10_overlap: float
    mean_cosine: float
    min_cosine: float
    speedup: float | None
    passed: bool


@dataclass(frozen=True)
class BackendStatus:
    device: str
    precision: str
    backend: str
    reason: str
    speedup: float | None
    """Tokens/s of the chosen precision over float32's in the same calibration (None: not measured)."""
    int8: Int8Gates | None
    """None where int8 was not measured (configured precision, extra missing, not a CPU)."""
    calibrated_at: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        """One line for the run artifact and the status text."""
        text = f"{self.device}: {self.precision} ({self.backend})"
        if self.speedup is not None and self.precision != "float32":
            text += f", {self.speedup:.2f}x float32"
        if self.int8 is not None:
            g = self.int8
            text += (
                f"; int8 gates {'passed' if g.passed else 'failed'}: recall@5 {g.recall_at_5:.3f} "
                f"(float32 {g.recall_at_5_float32:.3f}), top-10 overlap {g.top10_overlap:.3f}, "
                f"mean cosine {g.mean_cosine:.4f}"
            )
        elif self.reason:
            text += f" ({self.reason})"
        return text


def calibration_dir(embedding: EmbeddingSettings, home: Path) -> Path:
    """Where calibration results are kept: ``embedding.pool.calibration_dir``, else ``RAGLINE_HOME/calibration``
    (the default ``flows.runtime.Services`` gives the pool)."""
    return embedding.pool.calibration_dir or home / "calibration"


def backend_status(embedding: EmbeddingSettings, home: Path) -> list[BackendStatus]:
    """What the last calibration of the configured model chose per device (empty: none ran yet)."""
    path = _path(calibration_dir(embedding, home), embedding.model)
    data = _read(path)
    if data is None:
        return []
    try:
        return [_status(entry) for _, entry in sorted(data["devices"].items())]
    except (KeyError, TypeError, ValueError) as err:
        log.warning("ignoring unreadable backend record %s: %s", path, err)
        return []


def record_choice(directory: Path | None, model: str, device: Device, choice: PrecisionChoice) -> None:
    """Keep ``choice`` for ``device`` as what ``backend_status`` reports (nothing without a directory)."""
    if directory is None:
        return
    entry = _entry(device.key, choice)
    path = _path(directory, model)
    with _write_lock:
        data = _read(path) or {"model": model, "devices": {}}
        found = data.get("devices")
        devices: dict[str, Any] = found if isinstance(found, dict) else {}
        old = devices.get(device.key)
        if isinstance(old, dict) and {**old, "calibrated_at": None} == {**entry, "calibrated_at": None}:
            return  # a cached choice read again: the record stands as it was
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"model": model, "devices": {**devices, device.key: entry}}, indent=2))
        os.replace(tmp, path)


def _entry(device: str, choice: PrecisionChoice) -> dict[str, Any]:
    by_name = {m.precision: m for m in choice.measurements}
    ref = by_name.get("float32")

    def speedup(name: str) -> float | None:
        m = by_name.get(name)
        if m is None or ref is None or not ref.tokens_per_s or m.error is not None:
            return None
        return round(m.tokens_per_s / ref.tokens_per_s, 3)

    int8 = by_name.get("int8")
    figures = int8.gate_figures() if int8 is not None and int8.error is None else None
    gates = None
    if figures is not None:
        from embedding.gates import Gates, failures

        gates = asdict(
            Int8Gates(
                recall_at_5=round(figures.recall, 4),
                recall_at_5_float32=round(figures.reference_recall, 4),
                top10_overlap=round(figures.neighbour_overlap, 4),
                mean_cosine=round(figures.mean_cosine, 5),
                min_cosine=round(figures.min_cosine, 5),
                speedup=speedup("int8"),
                passed=not failures(figures, Gates()),
            )
        )
    return {
        "device": device,
        "precision": choice.precision,
        "backend": backend_of(choice.precision),
        "reason": choice.reason,
        "speedup": speedup(choice.precision),
        "int8": gates,
        "calibrated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _status(entry: dict[str, Any]) -> BackendStatus:
    int8 = entry.get("int8")
    return BackendStatus(
        device=str(entry["device"]),
        precision=str(entry["precision"]),
        backend=str(entry["backend"]),
        reason=str(entry["reason"]),
        speedup=None if entry.get("speedup") is None else float(entry["speedup"]),
        int8=Int8Gates(**int8) if isinstance(int8, dict) else None,
        calibrated_at=str(entry["calibrated_at"]),
    )


def _path(directory: Path, model: str) -> Path:
    return directory / f"backend-{hashlib.sha256(model.encode()).hexdigest()[:16]}.json"


def _read(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        log.warning("ignoring unreadable backend record %s: %s", path, err)
        return None
    return data if isinstance(data, dict) else None
