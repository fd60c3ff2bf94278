"""`llm-switch import`: llama-swap configs as llm-switch configs. The mappings table-tested on the
pure converter; then a config written in llama-swap's format with every key of its
config.example.yaml, imported, checked by `llm-switch check`, and served through the switch."""

from __future__ import annotations

import json
import textwrap
import urllib.request

import pytest
import yaml

from support import harness
from llm_switch.cli.llama_swap import convert
from llm_switch.errors import ConfigError


def which(name: str) -> str | None:
    return {"llama-server": "/opt/llama/llama-server", "docker": "/usr/bin/docker"}.get(name)


def imported(text: str, env: dict | None = None):
    return convert(textwrap.dedent(text), env or {}, which)


def test_cmd_macros_port_env_and_proxy():
    out = imported("""
        startPort: 9000
        macros:
          server: llama-server --port ${PORT}
          ctx: 4096
          args: --ctx-size ${ctx}
        models:
          b:
            macros: {ctx: 8192}
            cmd: |
              # a comment line, dropped
              ${server} -m ${env.MODELS}/b.gguf
              ${args} --alias ${MODEL_ID}
            env: ["CUDA_VISIBLE_DEVICES=1"]
          a:
            cmd: /srv/other --listen 8999
            proxy: http://localhost:8999
    """, {"MODELS": "/m"})
    models = out.config["models"]
    assert list(models) == ["b", "a"]  # the config's own order
    assert models["b"] == {"cmd": "/usr/bin/env CUDA_VISIBLE_DEVICES=1 LLAMA_ARG_LOG_VERBOSITY=4 "
                                  "/opt/llama/llama-server --port 9000 -m /m/b.gguf --ctx-size 8192 --alias b",
                           "url": "http://127.0.0.1:9000"}
    assert models["a"] == {"cmd": "/srv/other --listen 8999", "url": "http://127.0.0.1:8999"}
    assert out.notes == []
    assert "memory_budget" not in out.config  # no groups: every model runs alone, as in llama-swap


@pytest.mark.parametrize("group, memory, shared", [
    ({"swap": True, "exclusive": True}, None, False),
    ({}, None, False),  # llama-swap's defaults: swap and exclusive
    ({"swap": True, "exclusive": False}, "auto", True),
    ({"swap": False, "exclusive": False}, "auto", False),
    ({"swap": False}, "auto", False),
])
def test_groups(group, memory, shared):
    out = imported(f"""
        models:
          m1: {{cmd: "llama-server --port ${{PORT}}"}}
          m2: {{cmd: "llama-server --port ${{PORT}}"}}
          alone: {{cmd: "llama-server --port ${{PORT}}"}}
        groups:
          g: {json.dumps({**group, "members": ["m1", "m2"]})}
    """)
    models = out.config["models"]
    assert [models[m].get("memory") for m in ("m1", "m2", "alone")] == [memory, memory, None]
    assert (models["m1"]["url"] == models["m2"]["url"]) is shared
    assert models["alone"]["url"] not in (models["m1"]["url"], models["m2"]["url"])
    assert ("memory_budget" in out.config) is (memory == "auto")


def test_swap_false_exclusive_true_and_persistent_are_said():
    out = imported("""
        models:
          m1: {cmd: "llama-server --port ${PORT}"}
        routing:
          router:
            settings:
              groups:
                g: {swap: false, exclusive: true, persistent: true, members: [m1]}
    """)
    assert any(n.startswith("groups.g.exclusive:") for n in out.notes)
    assert any(n.startswith("groups.g.persistent:") for n in out.notes)


def test_matrix_sets_as_budget_slots_or_alone():
    out = imported("""
        models:
          gemma: {cmd: "llama-server --port ${PORT}"}
          qwen: {cmd: "llama-server --port ${PORT}"}
          voice: {cmd: "llama-server --port ${PORT}"}
          big: {cmd: "llama-server --port ${PORT}"}
          x: {cmd: "llama-server --port ${PORT}"}
          y: {cmd: "llama-server --port ${PORT}"}
        routing:
          router:
            use: matrix
            settings:
              matrix:
                vars: {g: gemma, q: qwen}
                evict_costs: {big: 30}
                sets:
                  llms: "g | q"
                  standard: "(+llms) & voice"
                  full: big
                  odd: "(x & y) | big"
    """)
    m = out.config["models"]
    assert m["gemma"]["memory"] == m["qwen"]["memory"] == m["voice"]["memory"] == "auto"
    assert m["gemma"]["url"] == m["qwen"]["url"] != m["voice"]["url"]  # one of g, q at a time, beside voice
    assert "memory" not in m["big"] and "memory" not in m["x"]
    assert any(n.startswith("matrix.sets.odd ((x & y) | big):") for n in out.notes), out.notes
    assert any(n.startswith("matrix.evict_costs:") for n in out.notes)


def test_aliases_objects_set_params_by_id_and_keys():
    out = imported("""
        apiKeys: ["sk-short", "${env.SWAP_KEY}", "0123456789abcdef0123"]
        models:
          m:
            cmd: llama-server --port ${PORT}
            aliases: ["a1", {id: a2, note: x}]
            ttl: 0
            unlisted: true
            sendLoadingState: false
            filters:
              setParamsByID:
                "${MODEL_ID}": {}
                "${MODEL_ID}:high": {reasoning_effort: high}
        hooks: {on_startup: {preload: [a1, nothing]}}
        globalTTL: 300
        sendLoadingState: true
        healthCheckTimeout: 5
    """)
    m = out.config["models"]["m"]
    assert m["aliases"] == ["a1", "a2", "m:high"]
    assert (m["idle_unload"], m["unlisted"], m["loading_progress"]) == ("off", True, "off")
    c = out.config
    assert (c["idle_unload"], c["loading_progress"], c["health_timeout"]) == ("300s", "reasoning", 15)
    assert c["preload"] == ["m"]
    assert c["api_keys"] == [{"key_env": "SWAP_KEY", "name": "SWAP_KEY"},
                             {"key": "0123456789abcdef0123", "name": "llama-swap-2"}]
    for start in ("apiKeys[0]:", "apiKeys[1]: set SWAP_KEY", "models.m.aliases[1].note:",
                  "models.m.filters.setParamsByID:", "hooks.on_startup.preload: 'nothing'"):
        assert any(n.startswith(start) for n in out.notes), (start, out.notes)


@pytest.mark.parametrize("text, message", [
    ("models: {m: {cmd: 'x ${env.NOPE}'}}", "environment variable NOPE is not set"),
    ("listen: 1", "needs a `models:` mapping"),
    ("models: [", "not valid YAML"),
    ("macros: {PORT: 1}\nmodels: {m: {cmd: x}}", "macros.PORT"),
])
def test_configs_llama_swap_would_refuse_are_errors(text, message):
    with pytest.raises(ConfigError, match=message):
        imported(text)


@pytest.mark.parametrize("model, note", [
    ({"cmd": "not-on-path --port ${PORT}"}, "program 'not-on-path' is not on PATH"),
    ({"cmd": "llama-server"}, "uses ${PORT} (the default proxy does) but cmd does not"),
    ({"cmd": "llama-server --port ${PORT}", "proxy": "http://127.0.0.1:${PORT}/v1"}, "without a path"),
    ({"cmd": "llama-server --port ${PORT} ${nope}"}, "unknown macro ${nope}"),
    ({"cmd": "llama-server --port ${PORT}", "env": ["NOEQUALS"]}, "is not NAME=value"),
])
def test_models_that_cannot_be_carried_over_are_named(model, note):
    out = imported("models:\n  ok: {cmd: 'llama-server --port ${PORT}'}\n  bad: " + json.dumps(model) + "\n")
    assert list(out.config["models"]) == ["ok"]
    assert any(n.startswith("models.bad") and note in n for n in out.notes), out.notes


# -- every key of llama-swap's config.example.yaml, imported and served ------------------------

# (written for this test in llama-swap's format; each key of its config.example.yaml is used once)
SWAP_CONFIG = """\
healthCheckTimeout: 90
logRequests: true
logLevel: debug
logTimeFormat: rfc3339
logToStdout: both
store:
  path: /tmp/llama-swap-activity.sqlite
metricsMaxInMemory: 500
captureBuffer: 0
ui:
  activity:
    session_id: ["X-My-Session"]
performance:
  disabled: true
  every: 30s
startPort: {start_port}
sendLoadingState: false
includeAliasesInList: true
globalTTL: 600
unloadTimeout: 5
macros:
  server: "${{env.SWAP_LLAMA_{tag}}} --port ${{PORT}} --threads 2"
  tiny: ${{env.SWAP_MODEL_{tag}}}
  ctx: 1024
  args: "--ctx-size ${{ctx}}"
apiKeys:
  - "${{env.SWAP_KEY_{tag}}}"
  - "short"
upstream:
  ignorePaths: ['.*\\.png$']
profiles:
  work:
    description: "work pins"
    pins:
      "daily": "chat-{tag}"
selectors:
  pick-{tag}:
    strategy: warm
    targets: ["chat-{tag}", "quiet-{tag}"]
    name: "Pick"
    description: "the first ready one"
    metadata: {{purpose: test}}
    settings: {{spillover: 2}}
models:
  chat-{tag}:
    macros:
      ctx: 2048
    cmd: |
      # the server and the model come from the macros above
      ${{server}} --model ${{tiny}}
      ${{args}} --alias ${{MODEL_ID}}
    name: "Chat"
    description: "a tiny model"
    env:
      - "LD_LIBRARY_PATH={libs}"
    proxy: http://127.0.0.1:${{PORT}}
    checkEndpoint: /health
    ttl: 120
    unloadTimeout: 3
    compat:
      ignoreWebsockets: true
    useModelName: "tiny"
    filters:
      stripParams: "top_k"
      setParams: {{temperature: 0.2}}
      setParamsByID:
        "${{MODEL_ID}}:cold": {{temperature: 0.0}}
    aliases:
      - "chat-alias-{tag}"
      - id: "chat-obj-{tag}"
    metadata:
      port: ${{PORT}}
    concurrencyLimit: 4
    sendLoadingState: true
    timeouts: {{connect: 10, keepalive: 0, responseHeader: 30, tlsHandshake: 5, idleConn: 30}}
    capabilities:
      in: [text]
      out: [text]
      tools: false
      reranker: false
      context: 2048
  quiet-{tag}:
    unlisted: true
    cmd: ${{server}} --model ${{tiny}} --alias ${{MODEL_ID}}
    env: ["LD_LIBRARY_PATH={libs}"]
    cmdStop: "kill -TERM ${{PID}}"
hooks:
  on_startup:
    preload: []
routing:
  router:
    use: group
    settings:
      groups:
        pair:
          swap: false
          exclusive: false
          persistent: false
          members: ["chat-{tag}", "quiet-{tag}"]
      matrix:
        vars: {{c: "chat-{tag}"}}
        evict_costs: {{c: 5}}
        sets:
          both: "c & quiet-{tag}"
  scheduler:
    use: fifo
    settings:
      fifo:
        priority: {{"chat-{tag}": 10}}
peers:
  other-box:
    proxy: http://192.0.2.1:8080
    apiKey: "${{env.SWAP_KEY_{tag}}}"
    models: [remote-model]
    timeouts: {{connect: 5}}
    filters:
      stripParams: "temperature"
      setParams: {{provider: {{zdr: true}}}}
"""

NOT_CARRIED = ["logRequests", "logLevel", "logTimeFormat", "logToStdout", "store", "metricsMaxInMemory",
               "captureBuffer", "ui", "performance", "includeAliasesInList", "unloadTimeout", "upstream",
               "profiles", "selectors", "peers", "apiKeys[1]", "routing.scheduler",
               "routing.router.settings.matrix", "models.{m}.name", "models.{m}.description",
               "models.{m}.unloadTimeout", "models.{m}.compat", "models.{m}.useModelName",
               "models.{m}.filters.stripParams", "models.{m}.filters.setParams", "models.{m}.filters.setParamsByID",
               "models.{m}.metadata", "models.{m}.concurrencyLimit", "models.{m}.timeouts",
               "models.{m}.capabilities", "models.{q}.cmdStop"]


def test_a_llama_swap_config_with_every_key_imports_checks_and_serves(deploy, tiny_models, llama_server,
                                                                      monkeypatch):
    tag = deploy.tag
    key = "k" * 8 + tag + "0123456789abcdef"
    for name, value in ((f"SWAP_LLAMA_{tag}", llama_server[0]), (f"SWAP_MODEL_{tag}", str(tiny_models["a"])),
                        (f"SWAP_KEY_{tag}", key)):
        monkeypatch.setenv(name, value)
    swap = deploy.dir / "llama-swap.yaml"
    swap.write_text(SWAP_CONFIG.format(tag=tag, start_port=harness.free_port(),
                                       libs=llama_server[1].get("LD_LIBRARY_PATH", "/nonexistent")))
    res = deploy.cli("import", str(swap))
    assert res.returncode == 0, res.stderr
    chat, quiet = f"chat-{tag}", f"quiet-{tag}"
    notes = res.stderr.splitlines()
    for key_path in NOT_CARRIED:
        key_path = key_path.format(m=chat, q=quiet)
        assert any(line.strip().startswith(key_path + ":") for line in notes), (key_path, res.stderr)
    config = yaml.safe_load(res.stdout)
    assert config["models"][chat]["aliases"] == [f"chat-alias-{tag}", f"chat-obj-{tag}", f"{chat}:cold"]
    assert config["models"][chat]["memory"] == config["memory_budget"] == "auto"
    assert config["models"][quiet]["unlisted"] is True

    out = deploy.dir / "config.yaml"
    out.write_text(res.stdout + f"listen: 127.0.0.1:{harness.free_port()}\n")
    for m in (chat, quiet):
        deploy.expect_transient(m)
    check = deploy.cli("check", "--config", str(out))
    assert check.returncode == 0, check.stdout + check.stderr
    daemon = deploy.start(out)
    listed = json.loads(_get(daemon.url + "/v1/models", key))
    assert [m["id"] for m in listed["data"]] == [chat]  # quiet is unlisted
    for name in (chat, f"chat-obj-{tag}"):
        body = json.dumps({"model": name, "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]})
        answer = json.loads(_get(daemon.url + "/v1/chat/completions", key, body.encode()))
        assert answer["choices"], answer


def _get(url: str, key: str, data: bytes | None = None) -> bytes:
    req = urllib.request.Request(url, data=data, headers={"Authorization": f"Bearer {key}",
                                                          "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=180) as resp:
        return resp.read()
