"""Serving: the newest model version over HTTP, swapped in without stalling requests."""
