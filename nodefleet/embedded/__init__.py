"""In-process stand-ins for the production parts: an MQTT broker and PostgreSQL."""
