"""serve-sync's HTTP endpoint for gateways: ``GET /routes`` → ``{language: adapter_name}``.

Also ``/healthz`` (200 while the consumer loop is alive), ``/readyz`` (200 once the live adapters
were restored and the subscription runs) and ``/metrics``: the same server as every long-running
COMPASS process (:class:`compass.health.HealthServer`). A gateway polls ``/routes`` and sends a
request in language *L* with ``model=<routes[L]>`` (vLLM) or ``lora_path=<routes[L]>`` (SGLang);
a language missing from the map is served by the base model. Runs on a daemon thread.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from compass.health import HealthServer


class RoutesServer(HealthServer):
    """``/routes`` plus the health endpoints on ``host:port`` (port 0: any free port)."""

    def __init__(
        self,
        host: str,
        port: int,
        routes: Callable[[], dict[str, str]],
        *,
        alive: Callable[[], bool] = lambda: True,
        ready: Callable[[], bool] = lambda: True,
    ) -> None:
        def page() -> tuple[bytes, str]:
            return json.dumps(routes(), sort_keys=True).encode(), "application/json"

        super().__init__(
            host, port, alive=alive, ready=ready, pages={"/routes": page}, name="compass-routes"
        )
