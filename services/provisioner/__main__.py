"""``python -m services.provisioner``: run the provisioner from ``NODEFLEET_*`` variables."""

from nodefleet.service import run_service

from .app import serve
from .settings import ProvisionerSettings

if __name__ == "__main__":
    run_service(ProvisionerSettings, serve)
