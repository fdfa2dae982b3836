"""The ota service: releases, staged rollouts, and firmware streamed over MQTT (docs/ota.md).

Built so far: the rollout rules (``rollout.py``) and the shared stream's scheduler (``stream.py``), both pure, and
the tables (``store.py``). Still to come: the MQTT wiring, the typed requests and the node receiver.
"""
