"""A small Python client for the ``/v1`` API, so scripts need not hand-craft HTTP.

>>> client = Client("http://127.0.0.1:8000")  # doctest: +SKIP
>>> client.predict("demo", [{"MET_pt": 41.2, "Muon_pt": [51.0, 33.2], ...}])  # doctest: +SKIP
{'model': 'demo', 'version': 7, 'scores': [0.93]}
"""

from __future__ import annotations

import requests


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

    def predict(self, model: str, events: list[dict]) -> dict:
        """Scores for events given as branch-space rows: ``{"model", "version", "scores"}``."""
        return self._call("POST", f"/v1/models/{model}/predict", json={"events": events}).json()

    def model(self, model: str) -> dict:
        return self._call("GET", f"/v1/models/{model}").json()

    def ready(self) -> bool:
        try:
            self._call("GET", "/v1/health/ready")
        except ClientError:
            return False
        return True
