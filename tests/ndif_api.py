"""ndif's FastAPI app under uvicorn, with its queue encoded by ``ndif_queue`` (JSON)
instead of pickle. Usage: ``python tests/ndif_api.py HOST PORT``."""
import sys

import uvicorn

import ndif.services.api.app as api
import ndif_queue

api.pickle = ndif_queue  # the app's one use of pickle: dumps(request) onto the queue

if __name__ == "__main__":
    uvicorn.run(api.app, host=sys.argv[1], port=int(sys.argv[2]), log_level="warning")
