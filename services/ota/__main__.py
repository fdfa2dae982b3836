"""``python -m services.ota``: run the ota service from ``NODEFLEET_*`` variables."""

from nodefleet.service import run_service

from .app import serve
from .settings import OtaSettings

if __name__ == "__main__":
    run_service(OtaSettings, serve)
