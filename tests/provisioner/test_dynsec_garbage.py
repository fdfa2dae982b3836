"""A dynamic-security response the provisioner cannot read is logged and dropped, whatever is wrong with it."""

from __future__ import annotations

import pytest

from nodefleet.wire.client import Message
from services.provisioner.credentials import DynamicSecurity

GARBAGE = [b"not json", b"[]", b'{"responses": []}', b'{"responses": [1]}', b"[" * 1500,
           b'{"responses": ' * 1200 + b"1" + b"}" * 1200]


@pytest.mark.parametrize("payload", GARBAGE, ids=["text", "list", "none", "not objects", "deep arrays", "deep objects"])
def test_an_unreadable_response_is_taken_and_dropped(payload: bytes):
    dynsec = DynamicSecurity()
    assert dynsec.feed(Message(dynsec.response_topic, payload)) is True


def test_other_topics_are_not_its_own():
    assert DynamicSecurity().feed(Message("nodes/x/state", b"[" * 1500)) is False
