"""Test-only NDIF worker: ndif's own request execution on CPU, without Ray.

It stands in for ndif's dispatcher and Ray model actor on a loopback test server: it
marks the backend connected (Redis key ``ray:connected``, refreshed with a short TTL and
deleted on SIGTERM, so a stopped worker makes the API answer 503), pops requests from the
API's Redis ``queue`` and runs each through ``BaseModelDeployment.run`` (deserialise,
execute, compress, respond COMPLETED/ERROR) -- subclassed only to load the model on CPU
in float32 and to skip the CUDA calls in its cleanup.

Test hooks, all in Redis: hash ``hs:models`` maps a Hub-style repo id to a local model
directory; list ``hs:fault`` holds one fault per coming request: ``raise`` (the block fails on
the server), ``sleep:S`` (the job runs S seconds longer), ``hold`` (the job waits until
the test pushes a token to ``hs:release``: a job that cannot finish before the test says
so, for budget tests without timing) or ``close`` (the API's pub/sub connections are
killed, so the client's websocket closes mid-job); ``hs:served`` counts
executed requests, ``hs:busy`` is set while one runs; ``hs:last_key_sha256`` is the sha256 of the last request's API key
(so tests can check the key arrived without storing it).
"""
from __future__ import annotations

import asyncio
import hashlib
import importlib.abc
import json
import os
import signal
import sys
import time

# Ray must never start (it rewrites 127.0.0.1 to an external address): no auto-connect,
# and an explicit ray.init() raises.
os.environ["RAY_ENABLE_AUTO_CONNECT"] = "0"
os.environ.pop("RAY_ADDRESS", None)
import ray  # noqa: E402


def _no_ray(*args, **kwargs):
    raise RuntimeError("the test worker never starts Ray")


ray.init = _no_ray


class _NotOnNdif(importlib.abc.MetaPathFinder):
    """NDIF has no headsurgeon installed: a job's code must arrive by value."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("headsurgeon", "headsurgeon_plugins"):
            raise ModuleNotFoundError(f"No module named {name!r} (not installed on NDIF)")
        return None


sys.meta_path.insert(0, _NotOnNdif())

from ndif.common.providers.redis import RedisProvider  # noqa: E402
from ndif.common.schema import BackendRequestModel, Status  # noqa: E402
from ndif.services.ray.deployments.modeling.base import BaseModelDeployment  # noqa: E402
from nnsight.modeling.huggingface import HuggingFaceModel  # noqa: E402
import ndif_queue  # noqa: E402  (beside this file: the JSON request queue)

CONNECTED_TTL_S = 3


class CPUDeployment(BaseModelDeployment):
    def load_from_disk(self):
        cls_path, key = self.model_key.split(":", 1)
        data = json.loads(key)
        local = RedisProvider.sync_client.hget("hs:models", data["repo_id"])
        if local is None:
            raise RuntimeError(f"test worker has no model {data['repo_id']!r}")
        data["repo_id"] = local
        model = HuggingFaceModel.from_model_key(f"{cls_path}:{json.dumps(data)}",
                                                dispatch=True, dtype="float32")
        model._module.requires_grad_(False)  # as on NDIF
        return model

    def execute(self, request):
        fault = RedisProvider.sync_client.lpop("hs:fault") or ""
        if fault == "raise":
            raise RuntimeError("injected worker fault (hs:fault=raise)")
        if fault.startswith("sleep:"):
            time.sleep(float(fault[6:]))
        if fault == "hold":  # 600 s: only a guard against a test that never releases
            RedisProvider.sync_client.blpop(["hs:release"], timeout=600)
        if fault == "close":
            RedisProvider.sync_client.client_kill_filter(_type="pubsub")
            time.sleep(0.5)
        out = super().execute(request)
        RedisProvider.sync_client.incr("hs:served")
        return out

    def cleanup(self):
        self.kill_switch.clear()
        self.kill_reason = None
        self.execution_ident = None
        self.model.interleaver.cancel()


async def heartbeat(stop: asyncio.Event) -> None:
    redis = RedisProvider.async_client
    while not stop.is_set():
        await redis.set("ray:connected", "1", ex=CONNECTED_TTL_S)
        try:
            await asyncio.wait_for(stop.wait(), 1.0)
        except TimeoutError:
            pass
    await redis.delete("ray:connected")


async def serve(request: BackendRequestModel, deployments: dict) -> None:
    redis = RedisProvider.async_client
    await redis.set("hs:last_key_sha256", hashlib.sha256((request.api_key or "").encode())
                    .hexdigest())
    request.respond(Status.QUEUED, "Your job has been queued.")
    if request.model_key not in deployments:
        request.respond(Status.DEPLOYING, "Loading the model (test worker).")
        try:
            deployments[request.model_key] = CPUDeployment(request.model_key, dtype="float32")
        except Exception as exc:  # noqa: BLE001 - reported to the client like ndif does
            request.respond(Status.ERROR, f"Model could not be deployed: {exc}")
            return
    request.respond(Status.DISPATCHED, "Your job has been dispatched.")
    await deployments[request.model_key].run(request)


async def main() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    beat = asyncio.create_task(heartbeat(stop))
    deployments: dict[str, CPUDeployment] = {}
    print("worker ready", flush=True)
    while not stop.is_set():
        item = await RedisProvider.async_bytes_client.brpop(["queue"], timeout=1)
        if item is None:
            continue
        await RedisProvider.async_client.set("hs:busy", "1")
        try:
            await serve(ndif_queue.loads(item[1]), deployments)  # JSON: see ndif_queue
        finally:
            await RedisProvider.async_client.delete("hs:busy")
    await beat


if __name__ == "__main__":
    asyncio.run(main())
