"""A hand-written FastAPI service over ``model.onnx``: a peer of ``bench/peers.py``.

Written as a FastAPI user would: pydantic models for the request and the answer, an
``async def`` route that runs onnxruntime in the event loop (a 1 ms model gains nothing
from the thread pool), the model loaded once per worker in the lifespan. Same HTTP
contract as the bare BentoML service: ``POST /predict {"instances": [[...], ...]}`` answers
a label, confidence and probabilities per row. Run from the repo root::

    PEER_MODEL_PATH=.../model.onnx uvicorn bench.peer_fastapi:app --workers 2 --port 3001
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel

from bench.peer_model import Model


class PredictRequest(BaseModel):
    instances: list[list[float]]


class Prediction(BaseModel):
    label: int
    confidence: float
    probabilities: list[float]


class PredictResponse(BaseModel):
    predictions: list[Prediction]


state: dict[str, Model] = {}


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    state["model"] = Model()
    yield


app = FastAPI(lifespan=lifespan)


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@app.post("/predict", response_model=PredictResponse)
async def predict(request: PredictRequest) -> dict[str, Any]:
    labels, confidences, probabilities = state["model"](request.instances)
    return {
        "predictions": [
            {"label": label, "confidence": confidence, "probabilities": row}
            for label, confidence, row in zip(
                labels.tolist(), confidences.tolist(), probabilities.tolist(), strict=True
            )
        ]
    }
