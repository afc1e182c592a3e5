"""The request queue between ndif's API and our test worker, without pickle.

ndif's API pushes ``pickle.dumps(request)`` onto Redis and its dispatcher unpickles it.
headsurgeon never unpickles, tests included, so ``tests/ndif_api.py`` hands the API this
object in place of its ``pickle`` module: a request travels as JSON (its binary payload
in base64) and the worker rebuilds the pydantic model from that.
"""
from __future__ import annotations

import base64
import json

from ndif.common.schema.request import BackendRequestModel


def dumps(request: BackendRequestModel) -> bytes:
    doc = request.model_dump(mode="json", exclude={"payload"})
    payload = request.payload
    doc["payload_b64"] = None if payload is None else base64.b64encode(payload).decode()
    return json.dumps(doc).encode()


def loads(data: bytes) -> BackendRequestModel:
    doc = json.loads(data)
    encoded = doc.pop("payload_b64")
    doc["payload"] = None if encoded is None else base64.b64decode(encoded)
    return BackendRequestModel.model_validate(doc)
