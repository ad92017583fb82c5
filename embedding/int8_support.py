"""Whether the int8 backend can run here: its packages (OpenVINO, and NNCF to quantise) come from the optional
extra ``ragline[int8]``, so that the default install never depends on them. Without them ``auto`` simply does
not offer int8 (logged once per process), and an explicit ``embedding.precision: int8`` fails with an error
that names the extra. The import is a seam: tests pass an importer that fails."""

from __future__ import annotations

import importlib
import importlib.util
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from types import ModuleType

log = logging.getLogger(__name__)

EXTRA = "ragline[int8]"
PACKAGES = ("openvino", "nncf")

Importer = Callable[[str], ModuleType]

_logged: set[str] = set()
_logged_lock = threading.Lock()


class Int8Unavailable(RuntimeError):
    """The int8 backend's packages are missing (or do not import)."""


@dataclass
class Int8Support:
    """Checks the extra once and remembers the answer; ``importer`` is the seam (default: the real import)."""

    importer: Importer = importlib.import_module
    _missing: str | None = field(default=None, init=False, repr=False)
    _checked: bool = field(default=False, init=False, repr=False)

    def missing(self) -> str | None:
        """Why int8 cannot run here (None: it can). ``auto`` calls this and logs the reason once."""
        if not self._checked:
            self._missing = self._probe()
            self._checked = True
            if self._missing is not None:
                with _logged_lock:
                    first = self._missing not in _logged
                    _logged.add(self._missing)
                if first:
                    log.info("int8 is not offered to embedding.precision auto: %s", self._missing)
        return self._missing

    def installed(self) -> bool:
        """Whether the extra's packages are installed, without importing them (NNCF imports torch and more:
        a second here), for a caller that only starts a process that will import them. The seam's importer,
        when one is given, answers instead."""
        if self.importer is not importlib.import_module:
            return self.missing() is None
        return all(importlib.util.find_spec(name) is not None for name in PACKAGES)

    def require(self) -> None:
        """Raise ``Int8Unavailable`` naming the extra when int8 cannot run (an explicit ``int8`` setting)."""
        reason = self.missing()
        if reason is not None:
            raise Int8Unavailable(f"embedding.precision int8 {reason}")

    def openvino(self) -> ModuleType:
        self.require()
        return self.importer("openvino")

    def nncf(self) -> ModuleType:
        self.require()
        try:
            return self.importer("nncf")
        except ImportError as err:
            raise Int8Unavailable(f"embedding.precision int8 {_needs('nncf', err)}") from err

    def _probe(self) -> str | None:
        """OpenVINO is imported (it runs the model); NNCF only found: it quantises an export once, and its
        import pulls in torch (1-2 s), which a worker running a cached export never needs."""
        for name in PACKAGES:
            try:
                if name == "nncf" and self.importer is importlib.import_module:
                    if importlib.util.find_spec(name) is None:
                        raise ImportError(f"No module named {name!r}")
                    continue
                self.importer(name)
            except ImportError as err:
                return _needs(name, err)
        return None


def _needs(name: str, err: ImportError) -> str:
    return f"needs the optional extra {EXTRA} ({name}: {err}): pip install '{EXTRA}'"


def versions() -> dict[str, str]:
    """Installed versions of the extra's packages (keys of the export cache and the calibration)."""
    found = {}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "missing"
    return found
