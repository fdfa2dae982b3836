"""Heap at -X heapsize=110K: a storm of incoming messages of every size, then a 1 MiB OTA download in the download
mode and the trial boot of the firmware it installed (bench/node_heap.py's storm, download and trial)."""

from __future__ import annotations

from bench.node_heap import LIMIT, run

# The goal: 20 KB free at all times, idle, under the storm, downloading and on trial (firmware/README.md,
# docs/ota.md). Measured: idle 28.4 KB, storm 26 KB, download mode 26.1 KB, trial boot 23 KB.
GOAL = 20 * 1024


async def test_a_storm_of_every_size_on_every_topic_keeps_the_node_connected(tmp_path, mosquitto):
    figures = await run(quick=True, workdir=tmp_path, broker=mosquitto, ota=True)
    print({k: v for k, v in figures.items() if k != "output"})
    assert "Traceback" not in figures["output"], figures["output"]
    # Never off the broker, never restarted, every command between the bursts answered.
    assert figures["disconnects"] == 0 and figures["restarts"] == 0 and figures["unanswered"] == 0
    assert figures["messages"] >= 4 * (LIMIT // 7)
    assert figures["idle_heap_min"] is not None and figures["storm_heap_min"] is not None
    assert figures["idle_heap_min"] >= GOAL, figures
    assert figures["storm_heap_min"] >= GOAL, figures
    # The download: verified with 20 KB to spare, the relay on through the restart, then installed; the new
    # firmware's trial boot (normal mode, the trial, its self-test and report) keeps 20 KB too.
    assert figures["ota_state"] == "verified" and figures["ota_bad"] == 0, figures
    assert figures["ota_heap_min"] is not None and figures["ota_heap_min"] >= GOAL, figures
    assert figures["ota_relay_kept"] and figures["ota_result"] == "updated", figures
    assert figures["trial_heap_min"] is not None and figures["trial_heap_min"] >= GOAL, figures
