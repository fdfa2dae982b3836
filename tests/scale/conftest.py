"""The scale tests reuse the brokers with dynamic security of the provisioner tests."""

from provisioner.conftest import dynsec_amqtt, dynsec_broker, dynsec_mosquitto  # noqa: F401
