"""A local stand-in receiver for development (`make run`, `make demo`): accepts deliveries,
verifies nothing, logs one line each, and can be told to fail some (FAIL_RATE) to show retries."""

from __future__ import annotations

import argparse
import json
import logging
import random

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from .logs import setup_logging

log = logging.getLogger("carinho_outbox.devsink")


def create_sink(fail_rate: float = 0.0, seed: int | None = None) -> Starlette:
    rng = random.Random(seed)

    async def receive(request: Request) -> JSONResponse:
        destination = request.path_params["destination"]
        body = await request.body()
        try:
            doc = json.loads(body)
        except ValueError:
            doc = {}
        failing = rng.random() < fail_rate
        log.info(
            "sink %s %s",
            "REJECTED (simulated 503)" if failing else "received",
            destination,
            extra={
                "action": "sink_received",
                "destination": destination,
                "event_type": doc.get("type"),
                "event_id": doc.get("id"),
                "webhook_id": request.headers.get("webhook-id"),
            },
        )
        if failing:
            return JSONResponse({"error": "simulated outage"}, status_code=503)
        return JSONResponse({"ok": True})

    return Starlette(routes=[Route("/{destination:path}", receive, methods=["POST"])])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="carinho-devsink", description=__doc__)
    parser.add_argument("--port", type=int, default=8099)
    parser.add_argument("--fail-rate", type=float, default=0.0)
    args = parser.parse_args(argv)
    setup_logging("text", "INFO", "sink")
    uvicorn.run(create_sink(args.fail_rate), host="127.0.0.1", port=args.port, log_config=None,
                access_log=False)


if __name__ == "__main__":
    main()
