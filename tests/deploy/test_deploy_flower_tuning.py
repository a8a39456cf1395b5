"""The SuperNode's prompt polls: what they change in Flower, and how the launcher starts it.

The tuning mutates Flower's module state, so each check runs in a fresh interpreter.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap


def _python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_supernode_loop_sleeps_at_most_the_interval_and_pulls_retry_promptly() -> None:
    done = _python(
        """
        import time
        from flwr.supercore.inflatable import inflatable_utils as iu
        from flwr.supernode import start_client_internal as loop
        from fedtwin.deploy.flower_tuning import prompt_object_pulls, prompt_supernode_polls

        assert iu.pull_objects.__kwdefaults__["initial_backoff"] == 1  # Flower's own
        prompt_supernode_polls(0.2)
        prompt_object_pulls()
        started = time.monotonic()
        loop.time.sleep(3)  # the idle wait between two pulls from the SuperLink
        waited = time.monotonic() - started
        assert 0.15 < waited < 1.0, waited
        assert loop.time.monotonic is time.monotonic  # everything else is the real module
        assert time.sleep is not loop.time.sleep  # the process's own time module untouched
        for function in (iu.pull_objects, iu.pull_and_inflate_object_from_tree):
            assert function.__kwdefaults__["initial_backoff"] == 0.05
            assert function.__kwdefaults__["backoff_cap"] == 1.0
        print("ok")
        """
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_an_object_still_missing_is_retried_until_it_arrives() -> None:
    done = _python(
        """
        import time
        from flwr.supercore.inflatable.inflatable_utils import ObjectUnavailableError, pull_objects
        from fedtwin.deploy.flower_tuning import prompt_object_pulls

        prompt_object_pulls()
        asked = []

        def pull(object_id):
            asked.append(time.monotonic())
            if len(asked) < 4:
                raise ObjectUnavailableError(object_id)
            return b"content"

        started = time.monotonic()
        assert pull_objects(["a"], pull) == {"a": b"content"}
        assert len(asked) == 4 and time.monotonic() - started < 1.5  # Flower's own: 7 s
        print("ok")
        """
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_the_launcher_refuses_a_bad_interval_or_missing_separator() -> None:
    for args in (["--fleet-poll-interval", "9", "--", "--insecure"], ["--insecure"]):
        done = subprocess.run(
            [sys.executable, "-m", "fedtwin.deploy.supernode_launcher", *args],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 2
        assert "fleet-poll-interval" in done.stderr or "usage" in done.stderr
