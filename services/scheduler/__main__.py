"""``python -m services.scheduler``: run the scheduler from ``NODEFLEET_*`` variables."""

from nodefleet.service import run_service

from .app import serve
from .settings import SchedulerSettings

if __name__ == "__main__":
    run_service(SchedulerSettings, serve)
