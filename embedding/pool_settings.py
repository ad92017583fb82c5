"""Settings of the embedding worker pool (``embedding.pool`` in the config file), apart from the pool so that
``embedding.model`` can nest them without importing threads and torch."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

Precision = Literal["float32", "bfloat16", "float16", "autocast-bfloat16", "autocast-float16", "int8"]
"""How a model computes (``embedding.precision``): weights cast to a dtype, float32 weights under
``torch.autocast``, or ``int8``: the model quantised by NNCF and run by OpenVINO on the CPU (the optional extra
``ragline[int8]``; ``embedding.int8_runner``)."""

PRECISIONS: tuple[Precision, ...] = (
    "float32",
    "bfloat16",
    "float16",
    "autocast-bfloat16",
    "autocast-float16",
    "int8",
)

_DEVICE = re.compile(r"^(cpu|cuda(:\d+)?)$")


class PoolSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    devices: list[str] | None = Field(
        default=None,
        description="torch devices, one worker each (cpu, cuda, cuda:1; cpu twice gives two CPU workers). "
        "Default: every CUDA GPU, else the CPU; or embedding.device where that is set explicitly.",
    )
    cpu_threads: int | None = Field(
        default=None,
        gt=0,
        description="Threads per CPU worker. Default: the CPUs this process may use (affinity, cgroup quota, "
        "and OMP_NUM_THREADS where set) shared among the CPU workers.",
    )
    max_batch_tokens: int | None = Field(
        default=None,
        ge=16,
        description="Cap on padded tokens (batch size x padded length) per batch, below what free memory "
        "allows. Default: 2048 on CPU (larger batches are not faster there, and pad more), 65536 on CUDA.",
    )
    max_batch_items: int = Field(default=512, gt=0, le=65536, description="Cap on chunks per batch.")
    memory_fraction: float = Field(
        default=0.7, gt=0, le=1, description="Share of the free device memory one batch may use."
    )
    regrow_after: int = Field(
        default=8, gt=0, description="Successful batches in a row after which a budget shrunk by OOM grows back."
    )
    regrow_factor: float = Field(default=1.25, gt=1, le=4, description="Growth of a shrunk budget per regrow step.")
    small_request_tokens: int = Field(
        default=4096,
        ge=0,
        description="Requests of at most this many tokens go to the low-latency lane, served before bulk work.",
    )
    max_attempts: int = Field(
        default=3,
        gt=0,
        description="Tries per chunk across worker crashes (and single-chunk OOMs) before its request fails.",
    )
    max_restarts: int = Field(
        default=5,
        ge=0,
        description="Restarts of a crashed worker in a row (without a success) before its device is retired.",
    )
    calibration_dir: Path | None = Field(
        default=None,
        description="Where calibration results (precision choice, memory per token) are cached, keyed by model "
        "revision, device and torch version. None: calibrate at every start.",
    )
    calibrate: Literal["at_start", "cached_only"] = Field(
        default="at_start",
        description="precision auto on a device without a cached calibration: at_start measures it when the "
        "worker starts (seconds to a minute; what `ragline serve` does); cached_only starts at the device's "
        "default (bfloat16 on CPUs with AMX, float32 elsewhere) and leaves measuring to a later serve (the "
        "CLI's and workers' runs, unless set here).",
    )
    prepare_in_background: bool = Field(
        default=True,
        description="precision auto: after a CLI run that embedded, build the int8 export and calibrate with it "
        "in a background process at the lowest CPU priority when they are not cached yet, so that later runs find "
        "int8 offered and measured (`ragline serve` does it while warm in any case). false: only serve does it.",
    )
    min_cosine: float = Field(
        default=0.999, gt=0, le=1, description="Quality floor of a precision: cosine to float32, every vector."
    )
    min_neighbour_overlap: float = Field(
        default=0.95, gt=0, le=1, description="Quality floor of a precision: top-10 neighbour overlap with float32."
    )
    min_speedup: float = Field(
        default=1.1,
        ge=1,
        description="A precision other than float32 is chosen only when at least this much faster (noise guard).",
    )

    @field_validator("devices")
    @classmethod
    def _known_devices(cls, devices: list[str] | None) -> list[str] | None:
        if devices is None:
            return None
        if not devices:
            raise ValueError("embedding.pool.devices is empty: list at least one device, or leave it out")
        for name in devices:
            if not _DEVICE.match(name):
                raise ValueError(f"embedding.pool.devices: {name!r} is not a device (cpu, cuda, cuda:N)")
        gpus = [d if d != "cuda" else "cuda:0" for d in devices if d != "cpu"]
        if len(gpus) != len(set(gpus)):
            raise ValueError(f"embedding.pool.devices lists a GPU twice: {devices}")
        return devices
