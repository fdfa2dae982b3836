"""nodefleet: self-hosted backend and firmware for ESP32 home devices over MQTT."""

__version__ = "0.1.0"
