"""A JSON file dataset, so that the sample project needs nothing beyond Kedro itself."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from kedro.io import AbstractDataset


class JSONFile(AbstractDataset[Any, Any]):
    """Saves and loads plain data as a JSON file; each node step can run in its own process."""

    def __init__(self, filepath: str) -> None:
        self._filepath = Path(filepath)

    def _load(self) -> Any:
        return json.loads(self._filepath.read_text(encoding="utf-8"))

    def _save(self, data: Any) -> None:
        """Write a temporary file, then rename it over the target: a step reading the file
        while another step (a retry, a parallel branch) saves it never sees half of it."""
        self._filepath.parent.mkdir(parents=True, exist_ok=True)
        partial = self._filepath.with_name(f".{self._filepath.name}.{os.getpid()}.partial")
        partial.write_text(json.dumps(data, indent=2, sort_keys=True), encoding="utf-8")
        os.replace(partial, self._filepath)

    def _exists(self) -> bool:
        return self._filepath.exists()

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath)}
