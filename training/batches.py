"""The batch store adapter on local folders: landing zone, quarantine, manifest, stored batches."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from champion.training.config import Contract
from champion.training.data import IntakeReport, TrainingData, intake, load_window
from champion.training.manifest import Manifest


class FileBatches:
    """The `BatchStore` port over `contract.data`'s folders and the manifest (its file, or
    the shared-mode table `manifest` reads).

    The manifest is read once per store: a cycle builds its own store, so intake, its window
    and the consumed marks all see one consistent manifest.
    """

    def __init__(
        self, contract: Contract, *, manifest: Callable[[], Manifest] | None = None
    ) -> None:
        self.contract = contract
        self._read_manifest = manifest or (lambda: Manifest(contract.data.manifest))
        self._manifest: Manifest | None = None

    @property
    def manifest(self) -> Manifest:
        if self._manifest is None:
            self._manifest = self._read_manifest()
        return self._manifest

    def intake(self) -> IntakeReport:
        return intake(self.contract, self.manifest)

    def window(self) -> TrainingData:
        return load_window(self.contract, self.manifest)

    def mark_consumed(self, batch_ids: Sequence[str], by: str) -> None:
        self.manifest.mark_consumed(list(batch_ids), by)
