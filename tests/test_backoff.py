"""The shared reconnect backoff: doubles, caps, resets after a long attempt."""

from __future__ import annotations

from nodefleet.backoff import Backoff


async def test_pauses_double_up_to_the_cap_and_reset_after_a_long_attempt(monkeypatch) -> None:
    slept: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        slept.append(seconds)

    monkeypatch.setattr("asyncio.sleep", fake_sleep)
    backoff = Backoff(first=0.1, most=0.5, reset_after=5.0, jitter=0.0)
    for _ in range(5):
        backoff.attempt()
        await backoff.wait()
    assert slept == [0.1, 0.2, 0.4, 0.5, 0.5]

    backoff.attempt()
    backoff._started -= 60  # this attempt has been up for a minute: a fresh failure starts small again
    assert backoff.next_pause == 0.1


async def test_jitter_stays_within_its_band(monkeypatch) -> None:
    slept: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        slept.append(seconds)

    monkeypatch.setattr("asyncio.sleep", fake_sleep)
    backoff = Backoff(first=1.0, most=1.0, jitter=0.2)
    for _ in range(50):
        await backoff.wait()
    assert all(0.8 <= s <= 1.2 for s in slept) and len(set(slept)) > 1
