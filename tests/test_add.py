"""`llm-switch add` and `remove` in a `setup.sh --demo` install, as a user with a GGUF of their own
meets them: real user manager, the installed llm-switch.service, real llama-server."""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import pytest

from support import harness
from support.harness import free_port, wait_for
from support.setup_sh import HomeManager, chat, free_backend_port, request, run_setup, setup_env, tree_state


@pytest.fixture(scope="module")
def demo(llama_server, tmp_path_factory):
    um = HomeManager()
    try:
        listen_port = free_port()
        backend = free_backend_port(avoid=listen_port)
        run_setup(um, "--demo", "--yes", "--listen", f"127.0.0.1:{listen_port}", "--backend-port", str(backend),
                  "--llama-server", llama_server[0], "--python", sys.executable)
        models = tmp_path_factory.mktemp("own")
        yield SimpleNamespace(um=um, env=setup_env(um), url=f"http://127.0.0.1:{listen_port}", backend=backend,
                              config=um.conf_dir / "config.yaml", models=models,
                              gguf=harness.make_model(models / "mine.gguf", seed=7))
    finally:
        um.close()


def cli(demo, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llm_switch", *args], env=demo.env, capture_output=True,
                          text=True, timeout=180)


def served(demo) -> list[str]:
    return [m["id"] for m in request(demo.url + "/v1/models")[1]["data"]]


def test_bad_input_changes_nothing(demo):
    not_gguf = demo.models / "notes.gguf"
    not_gguf.write_text("not a model\n")
    before = tree_state(demo.um.home, demo.um.config_dir)
    cases = [
        (["mine", str(demo.models / "missing.gguf")], "no such file"),
        (["mine", str(not_gguf)], "not a GGUF file"),
        (["demo-a", str(demo.gguf)], "already taken by model 'demo-a'"),
        (["mine", str(demo.gguf), "--alias", "demo-b"], "already taken by model 'demo-b'"),
        (["my model", str(demo.gguf)], "model name"),
        (["../x", str(demo.gguf)], "model name"),
        (["mine", str(demo.gguf), "--", "--port", "9"], "LLAMA_ARG_PORT is set by add itself"),
        (["mine", str(demo.gguf), "--ctx", "512", "--", "-c", "1024"], "--ctx and a context size"),
        (["mine", str(demo.gguf), "--", "--dry-sequence-breaker", "a b"], "splits LLAMA_ARGS at spaces"),
    ]
    for args, message in cases:
        res = cli(demo, "add", *args)
        assert res.returncode != 0, (args, res.stdout)
        assert message in res.stderr and "nothing was changed" in res.stderr, (args, res.stderr)
    res = cli(demo, "remove", "demo-a")
    assert res.returncode != 0 and "was not added by `llm-switch add`" in res.stderr, res.stderr
    assert tree_state(demo.um.home, demo.um.config_dir) == before


def test_added_model_serves_by_its_name_and_remove_undoes_it(demo):
    original = demo.config.read_text()
    res = cli(demo, "add", "mine", str(demo.gguf), "--alias", "my-alias", "--",
              "-c", "1024", "--temp", "0.5", "--top-k", "20")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "reloaded llm-switch.service" in res.stdout, res.stdout
    env_file = demo.um.conf_dir / "models" / "mine.env"
    lines = [ln for ln in env_file.read_text().splitlines() if not ln.startswith("#")]
    assert lines == [f"LLAMA_ARG_MODEL={demo.gguf}", "LLAMA_ARG_ALIAS=mine", f"LLAMA_ARG_PORT={demo.backend}",
                     "LLAMA_ARG_LOG_VERBOSITY=4", "LLAMA_ARG_CTX_SIZE=1024", "LLAMA_ARG_TOP_K=20",
                     "LLAMA_ARGS='--temp 0.5'"]  # --temp has no variable in this build
    config = demo.config.read_text()
    assert config.startswith(original.rstrip("\n")), config  # every line setup.sh wrote, as it was
    wait_for(lambda: "mine" in served(demo), 30, what="the reloaded switch listing mine")
    for name in ("mine", "my-alias"):
        status, body = chat(demo.url, name)
        assert status == 200, body
        assert body["model"] == "mine"
    assert demo.um.active_units("llama-server@*") == ["llama-server@mine.service"]

    res = cli(demo, "remove", "mine")
    assert res.returncode == 0, res.stdout + res.stderr
    assert demo.config.read_text() == original
    assert not env_file.exists()
    wait_for(lambda: "mine" not in served(demo), 30, what="the reloaded switch without mine")
    wait_for(lambda: demo.um.active_units("llama-server@mine.service") == [], 30,
             what="the removed model's unit stopped by the reload")


def test_with_a_budget_a_model_gets_a_port_of_its_own_and_edited_files_are_kept(demo):
    original = demo.config.read_text()
    demo.config.write_text(original + "memory_budget: 1G  # mine\n")
    res = cli(demo, "add", "side", str(demo.gguf))
    assert res.returncode == 0, res.stdout + res.stderr
    env_file = demo.um.conf_dir / "models" / "side.env"
    port = int(next(ln for ln in env_file.read_text().splitlines() if ln.startswith("LLAMA_ARG_PORT="))[15:])
    assert port not in (demo.backend, int(demo.url.rsplit(":", 1)[1]))
    assert f"    url: http://127.0.0.1:{port}\n" in demo.config.read_text()
    wait_for(lambda: "side" in served(demo), 30, what="the reloaded switch listing side")
    assert chat(demo.url, "side")[0] == 200
    env_file.write_text(env_file.read_text() + "LLAMA_ARG_THREADS=1\n")
    res = cli(demo, "remove", "side")
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"kept {env_file}: you changed it" in res.stdout
    assert env_file.exists()
    assert demo.config.read_text() == original + "memory_budget: 1G  # mine\n"
