"""A naive BentoML service: load the model file with skops, predict_proba per request.

What one writes in ten minutes from the BentoML quickstart: no validation beyond BentoML's
own, no registry, no swap, no capture. The model file is the `model.skops` of the champion
version (a path in BENCH_MODEL_PATH); its types are trusted as the file lists them.
"""

from __future__ import annotations

import os
from typing import Any

import bentoml


@bentoml.service(name="bench_naive", traffic={"timeout": 60})
class Naive:
    def __init__(self) -> None:
        import skops.io as sio

        path = os.environ["BENCH_MODEL_PATH"]
        self.pipeline = sio.load(path, trusted=sio.get_untrusted_types(file=path))

    @bentoml.api
    def predict(self, instances: list[dict[str, Any]]) -> dict[str, Any]:
        import pandas as pd

        proba = self.pipeline.predict_proba(pd.DataFrame(instances))
        return {"probabilities": proba.tolist(), "classes": self.pipeline.classes_.tolist()}
