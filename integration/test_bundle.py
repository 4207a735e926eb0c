"""Integration tests on a real Juju controller, driven with jubilant.

Usage: python integration/test_bundle.py      (after `tests/run charms`)
Needs `juju` with a bootstrapped machine controller (LXD works), and the Python packages
`jubilant` and `openai`. Without them it prints one line saying what is missing and exits 0.

It deploys ./bundle.yaml into a temporary model, waits for every unit to be active, sends
a chat completion through the scheduler with the official openai client (P/D path and
single path), checks the units' published metrics endpoint with a scrape, swaps the decode
and prefill model to a bad source (blocked, still serving) and back (active again).
"""
import json
import pathlib
import shutil
import subprocess
import sys
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parents[1]
CHARMS = ["llmd-scheduler", "llmd-cache-manager", "llmd-prefill", "llmd-decode"]


def skip(why):
    print(f"skipped: {why}")
    sys.exit(0)


def preflight():
    if shutil.which("juju") is None:
        skip("no juju command")
    try:
        import jubilant  # noqa: F401
        import openai  # noqa: F401
    except ImportError as e:
        skip(f"{e.name} not installed (pip install jubilant openai)")
    r = subprocess.run(["juju", "controllers", "--format", "json"], capture_output=True, text=True)
    if r.returncode != 0 or not json.loads(r.stdout or "{}").get("current-controller"):
        skip("no Juju controller (juju bootstrap localhost)")
    missing = [c for c in CHARMS if not (ROOT / "build" / f"{c}.charm").exists()]
    if missing:
        skip(f"charms not built ({', '.join(missing)}): run tests/run charms")


def unit_address(status, app):
    unit = next(iter(status.apps[app].units.values()))
    return unit.public_address or unit.address


def main():
    preflight()
    import jubilant
    import openai

    with jubilant.temp_model() as juju:
        # Local charm paths in a bundle are relative to the bundle's directory.
        juju.cli("deploy", str(ROOT / "bundle.yaml"))
        status = juju.wait(jubilant.all_active, error=jubilant.any_error, timeout=1800)
        sched = f"http://{unit_address(status, 'llmd-scheduler')}:8000"

        client = openai.OpenAI(base_url=sched + "/v1", api_key="unused", max_retries=0)
        model = client.models.list().data[0].id
        long_prompt = "Summarise: " + " ".join(f"sentence {i} about library rules." for i in range(40))
        for prompt in (long_prompt, "Hi"):
            pieces = []
            for chunk in client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": prompt}], max_tokens=16,
                temperature=0, stream=True,
            ):
                if chunk.choices and chunk.choices[0].delta.content:
                    pieces.append(chunk.choices[0].delta.content)
            assert pieces, f"no tokens streamed for {prompt[:20]!r}"
        raw = client.chat.completions.with_raw_response.create(
            model=model, messages=[{"role": "user", "content": long_prompt + " again"}], max_tokens=4,
        )
        route = json.loads(raw.headers["x-llmd-route"])
        assert route["path"] in ("pd", "single"), route

        # Every unit serves the metrics its metrics-endpoint data points Prometheus at.
        for app in CHARMS:
            port = 8100 if app == "llmd-cache-manager" else 8000
            text = urllib.request.urlopen(
                f"http://{unit_address(status, app)}:{port}/metrics", timeout=10
            ).read().decode()
            assert "llmd_" in text or "vllm:" in text, app

        # A bad model blocks and keeps serving; a good one clears it.
        juju.config("llmd-decode", {"model-id": "/nonexistent.gguf"})
        juju.wait(lambda s: jubilant.all_blocked(s, "llmd-decode"), timeout=600)
        client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "still there?"}], max_tokens=4
        )
        juju.config("llmd-decode", {"model-id": "default"})
        juju.wait(jubilant.all_active, error=jubilant.any_error, timeout=900)
    print("ok: integration")


if __name__ == "__main__":
    main()
