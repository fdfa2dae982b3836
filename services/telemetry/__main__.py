"""``python -m services.telemetry``: run the telemetry service from ``NODEFLEET_*`` variables."""

from nodefleet.service import run_service

from .app import serve
from .settings import TelemetrySettings

if __name__ == "__main__":
    run_service(TelemetrySettings, serve)
