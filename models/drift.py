"""Drift on the prequential loss stream, with river's ADWIN.

A model that is learning sees its loss fall; a sudden rise on events it has
not yet seen means the data changed (a new run period, a detector problem, a
producer reading the wrong files). ADWIN keeps an adaptive window of the loss
and flags when its two halves differ by more than chance allows (confidence
``training.drift_delta``). One value per mini-batch of 256 events is fed (the
mean loss), which keeps the detector cheap at millions of events/s. Its
state is checkpointed as JSON with the model.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from hepstream.models import river_state

log = logging.getLogger(__name__)
_STEP = 256
_KEPT_EVENTS = 20


class LossDrift:
    def __init__(self, delta: float = 0.002):
        from river import drift

        self.detector = drift.ADWIN(delta=delta)
        self.detections = 0
        self.events: list[dict] = []  # the latest detections: when, after how many events, mean loss

    def update(self, losses: np.ndarray, events_before: int) -> bool:
        """Feed a batch's per-event losses (scored before learning); True when drift was detected in it."""
        found = False
        for start in range(0, len(losses), _STEP):
            self.detector.update(float(losses[start : start + _STEP].mean()))
            if self.detector.drift_detected:
                found = True
                self.detections += 1
                event = {"time": time.time(), "events": events_before + start,
                         "loss": round(self.detector.estimation, 5)}
                self.events = (self.events + [event])[-_KEPT_EVENTS:]
                log.warning("drift in the loss stream after %d events (mean loss now %.4f)",
                            event["events"], event["loss"])
        return found

    def summary(self) -> dict:
        return {"detections": self.detections, "latest": self.events[-5:]}

    def state_dict(self) -> dict:
        return {"detector": river_state.dumps(self.detector), "detections": self.detections, "events": self.events}

    def load_state_dict(self, state: dict) -> None:
        self.detector = river_state.loads(state["detector"])
        self.detections = int(state["detections"])
        self.events = list(state["events"])
