"""A small Python client for the ``/v1`` API, so scripts need not hand-craft HTTP.

>>> client = Client("http://127.0.0.1:8000", token="...")  # doctest: +SKIP
>>> client.predict("demo", [{"MET_pt": 41.2, "Muon_pt": [51.0, 33.2], ...}])  # doctest: +SKIP
{'model': 'demo', 'version': 7, 'scores': [0.93]}
>>> scores, version = client.predict_arrow("demo", uproot_file["Events"].arrays(library="pd"))  # doctest: +SKIP

Large batches go as Arrow IPC (:meth:`Client.predict_arrow`): no JSON is
built for them on either side.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import requests

from hepstream.serve.arrow_io import ARROW_STREAM, read_scores, write_stream


class ClientError(RuntimeError):
    """A request the server refused or could not answer; carries the status and the server's message."""

    def __init__(self, status: int | None, message: str):
        super().__init__(f"HTTP {status}: {message}" if status else message)
        self.status = status


class Client:
    def __init__(self, base_url: str, timeout_s: float = 30.0, token: str | None = None):
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.session = requests.Session()
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"

    def _call(self, method: str, path: str, **kwargs) -> requests.Response:
        try:
            response = self.session.request(method, self.base_url + path, timeout=self.timeout_s, **kwargs)
        except requests.RequestException as error:
            raise ClientError(None, f"{method} {path}: {error}") from None
        if response.status_code >= 400:
            try:
                message = response.json().get("error", response.text)
            except ValueError:
                message = response.text
            raise ClientError(response.status_code, f"{method} {path}: {message}")
        return response

    def predict(self, model: str, events: list[dict], version: int | None = None) -> dict:
        """Scores for events given as branch-space rows: ``{"model", "version", "scores"}``.

        ``version`` pins the answer to that version instead of the newest.
        """
        return self._call("POST", f"/v1/models/{model}/predict", json={"events": events},
                          params=_version(version)).json()

    def predict_arrow(self, model: str, table: pa.Table | pa.RecordBatch,
                      version: int | None = None) -> tuple[np.ndarray, int]:
        """Scores (float32, in row order) and the version that computed them, for a table of branches."""
        response = self._call("POST", f"/v1/models/{model}/predict", data=write_stream(table),
                              headers={"Content-Type": ARROW_STREAM}, params=_version(version))
        scores, _model, answered_by = read_scores(response.content)
        return scores, answered_by

    def models(self) -> list[dict]:
        return self._call("GET", "/v1/models").json()["models"]

    def model(self, model: str) -> dict:
        return self._call("GET", f"/v1/models/{model}").json()

    def ready(self) -> bool:
        try:
            self._call("GET", "/v1/health/ready")
        except ClientError:
            return False
        return True


def _version(version: int | None) -> dict:
    return {} if version is None else {"version": version}
