"""config.yaml parsing: a table of accepted configs and a table of errors with their key paths."""

import os
import textwrap

import pytest

from llm_switch.config import DEFAULT_HEALTH_TIMEOUT, DEFAULT_MAX_BODY, find_path, load, parse
from llm_switch.errors import ConfigError

pytestmark = pytest.mark.unit


def cfg(text: str):
    return parse(textwrap.dedent(text))


def test_short_and_long_forms():
    c = cfg("""
        listen: 0.0.0.0:4000
        allow_unauthenticated: true
        backend: http://127.0.0.1:5000
        health_timeout: 30
        models:
          coder: llama-server@coder.service
          thinker:
            unit: llama-server@thinker.service
            aliases: [think, t]
            url: http://127.0.0.1:5001
            health_timeout: 12.5
            repair_tool_calls: false
          tiny:
            cmd: /usr/bin/llama-server -m "/models/my tiny.gguf" --port 5000
    """)
    assert (c.listen_host, c.listen_port, c.listen) == ("0.0.0.0", 4000, "0.0.0.0:4000")
    assert c.max_body_bytes == DEFAULT_MAX_BODY
    coder, thinker, tiny = c.models["coder"], c.models["thinker"], c.models["tiny"]
    assert (coder.unit, coder.url, coder.health_timeout, coder.repair_tool_calls) == (
        "llama-server@coder.service", "http://127.0.0.1:5000", 30.0, True)
    assert (thinker.url, thinker.aliases, thinker.health_timeout, thinker.repair_tool_calls) == (
        "http://127.0.0.1:5001", ("think", "t"), 12.5, False)
    assert tiny.cmd == ("/usr/bin/llama-server", "-m", "/models/my tiny.gguf", "--port", "5000")
    assert tiny.unit == "llm-switch-tiny.service"
    assert c.resolve("t") is thinker and c.resolve("thinker") is thinker and c.resolve("nope") is None


def test_defaults():
    c = cfg("models: {a: a.service}")
    assert c.listen == "127.0.0.1:3002"
    assert c.models["a"].url == "http://127.0.0.1:3004"
    assert c.models["a"].health_timeout == DEFAULT_HEALTH_TIMEOUT


def test_seed_format_loads_with_a_warning_for_trace_log():
    c = cfg("""
        server:
          host: 127.0.0.1
          port: 3002
          llama_url: http://127.0.0.1:3004
          trace_log: /tmp/trace.log
        models:
          qwen3-coder-flash: llama-server-qwen3-coder-flash.service
          bge-m3: llama-server-bge-m3.service
    """)
    assert c.listen == "127.0.0.1:3002"
    assert c.models["bge-m3"].url == "http://127.0.0.1:3004"
    assert c.models["qwen3-coder-flash"].unit == "llama-server-qwen3-coder-flash.service"
    assert c.warnings == ("server.trace_log: ignored (requests are logged to the journal instead)",)


@pytest.mark.parametrize("text, message", [
    ("models: {a: coder}", "models.a.unit: must end in .service (got 'coder')"),
    ("models: {a: {unit: a.service, cmd: /bin/true}}", "models.a: needs exactly one of unit or cmd"),
    ("models: {a: {aliases: [x]}}", "models.a: needs exactly one of unit or cmd"),
    ("models: {a: {unit: a.service, colour: red}}", "models.a.colour: unknown key"),
    ("models: {a: {cmd: llama-server -m x}}", "models.a.cmd: the program must be an absolute path"),
    ("models: {a: {cmd: '/bin/x \"unclosed'}}", "models.a.cmd: cannot split into arguments"),
    ("models: {a: {cmd: ''}}", "models.a.cmd: must not be empty"),
    ("models: {a: {unit: a.service, url: 'ftp://x'}}", "models.a.url: must be an http(s) URL"),
    ("models: {a: {unit: a.service, url: 'http://h:x'}}", "models.a.url: must be an http(s) URL"),
    ("models: {a: {unit: a.service, url: 'http://h:1/v1'}}", "models.a.url: must be an http(s) URL with no path"),
    ("models: {a: {unit: a.service, health_timeout: 0}}", "models.a.health_timeout: must be a duration"),
    ("models: {a: {unit: a.service, health_timeout: soon}}", "models.a.health_timeout: must be a duration"),
    ("models: {a: {unit: a.service, aliases: [1]}}", "models.a.aliases: must be a list of names"),
    ("models: {a: {unit: a.service, repair_tool_calls: maybe}}", "models.a.repair_tool_calls: must be true or false"),
    ("models: {a: [a.service]}", "models.a: must be a unit name or a mapping (got a list)"),
    ("models: {'a b': a.service}", "models.a b: model name must start with a letter or digit"),
    ("models: {'org/m': a.service}", "models.org/m: model name must not hold '/' (it names a folder of the "
     "prompt cache); give the name with '/' as an alias (got 'org/m')"),
    ("models: {'a..b': a.service}", "models.a..b: model name must not hold '..'"),
    ("models: {\"a\\x1b[2J\": a.service}", "model name must not hold control characters (got 'a\\x1b[2J')"),
    ("models: {a: {unit: a.service, aliases: [\"x\\ny\"]}}", "models.a.aliases: 'x\\ny' must not hold control"),
    ("max_json_bytes: 0\nmodels: {a: a.service}", "max_json_bytes: must be a number of bytes"),
    ("allowed_hosts: ['llm.home.arpa:3002']\nmodels: {a: a.service}",
     "allowed_hosts[0]: must be a host name or address without scheme or port (got 'llm.home.arpa:3002')"),
    ("allowed_hosts: 3\nmodels: {a: a.service}", "allowed_hosts: must be a list of host names"),
    ("cors_origins: ['*']\nmodels: {a: a.service}", "cors_origins[0]: must be an origin such as http://localhost:8080"),
    ("cors_origins: [http://x/app]\nmodels: {a: a.service}", "cors_origins[0]: must be an origin"),
    ("models: {a: a.service, b: {unit: b.service, aliases: [a]}}", "models.b: name or alias 'a' is already used"),
    ("models: {a: x.service, b: x.service}", "models.b.unit: x.service is already used by model 'a'"),
    ("models: {}", "models: must be a mapping of at least one model"),
    ("listen: 3002\nmodels: {a: a.service}", "listen: must be HOST:PORT"),
    ("listen: 'h:70000'\nmodels: {a: a.service}", "listen: must be HOST:PORT"),
    ("backend: localhost:3004\nmodels: {a: a.service}", "backend: must be an http(s) URL"),
    ("health_timeout: -1\nmodels: {a: a.service}", "health_timeout: must be a duration"),
    ("max_body_bytes: 1.5\nmodels: {a: a.service}", "max_body_bytes: must be a number of bytes"),
    ("colour: red\nmodels: {a: a.service}", "colour: unknown key"),
    ("- a\n- b", "top level must be a mapping, got a list"),
    ("models: [", "not valid YAML"),
    ("server: {port: x}\nmodels: {a: a.service}", "server.port: must be an integer"),
    ("server: {hots: x}\nmodels: {a: a.service}", "server.hots: unknown key"),
    ("server: {port: 1}\nlisten: 'h:1'\nmodels: {a: a.service}", "server: cannot be combined with listen"),
    ("memory_budget: lots\nmodels: {a: a.service}", "memory_budget: must be a size such as 7.5G"),
    ("memory_budget: -1\nmodels: {a: a.service}", "memory_budget: must be a size"),
    ("models: {a: {unit: a.service, memory: 1X}}", "models.a.memory: must be a size"),
    ("memory_budget: 4G\nmodels: {a: {unit: a.service, memory: 5G}}",
     "models.a.memory: 5G is larger than memory_budget 4G"),
    ("min_loaded: soon\nmodels: {a: a.service}", "min_loaded: must be a duration such as 30, 30s, 10m or 2h"),
    ("models: {a: {unit: a.service, min_loaded: 0}}", "models.a.min_loaded: must be a duration"),
    ("models: {a: {unit: a.service, idle_unload: 5d}}", "models.a.idle_unload: must be a duration"),
    ("max_wait: -3\nmodels: {a: a.service}", "max_wait: must be a duration"),
    ("max_queue: 0\nmodels: {a: a.service}", "max_queue: must be a positive integer"),
    ("preload: [b]\nmodels: {a: a.service}", "preload[0]: unknown model 'b' (known: a)"),
    ("preload: {a: 1}\nmodels: {a: a.service}", "preload: must be a list of model names"),
    ("prompt_cache: maybe\nmodels: {a: a.service}", "prompt_cache: must be true or false (got 'maybe')"),
    ("models: {a: {unit: a.service, prompt_cache: 1}}", "models.a.prompt_cache: must be true or false (got 1)"),
    ("prompt_cache_dir: slots\nmodels: {a: a.service}",
     "prompt_cache_dir: must be an absolute path or start with ~/ (got 'slots')"),
    ("prompt_cache_dir: [x]\nmodels: {a: a.service}", "prompt_cache_dir: must be an absolute path"),
    ("prompt_cache_max: lots\nmodels: {a: a.service}", "prompt_cache_max: must be a size such as 7.5G"),
    ("prompt_cache_min_tokens: 0\nmodels: {a: a.service}", "prompt_cache_min_tokens: must be a positive integer"),
    ("models: {a: {unit: a.service, prompt_cache_max: 1G}}", "models.a.prompt_cache_max: unknown key"),
    # issue 21: what a new user writes
    ("models: {a: {unit: a.service, memory: 6}}", "models.a.memory: 6 bytes? write 6G"),
    ("memory_budget: '8'\nmodels: {a: a.service}", "memory_budget: 8 bytes? write 8G"),
    ("models: {a: {unit: a.service, aliases: 'c, d'}}", "models.a.aliases: must be a list, such as [c, d]"),
    ("models: {a: {unit: a.service, aliases: c}}", "models.a.aliases: must be a list, such as [c]"),
    ("ttl: 60\nmodels: {a: a.service}", "ttl: unknown key; ttl is llama-swap's; here: idle_unload"),
    ("models: {a: {unit: a.service, proxy: 'http://h:1'}}", "models.a.proxy: unknown key; proxy is llama-swap's; "
     "here: url"),
    ("models: {a: {unit: a.service, helth_timeout: 5}}", "models.a.helth_timeout: unknown key; did you mean "
     "health_timeout?"),
    ("idle_unlaod: 5m\nmodels: {a: a.service}", "idle_unlaod: unknown key; did you mean idle_unload?"),
    ("models: {a: {cmd: '/bin/llama-server --port ${PORT}'}}", "models.a.cmd: ${PORT} is a llama-swap macro, which "
     "llm-switch does not expand; convert the config with `llm-switch import`"),
    ("models: {a: {cmd: '/bin/x -m ${MODEL_DIR}/a.gguf'}}", "models.a.cmd: ${MODEL_DIR} is a llama-swap macro"),
    ("models: {a: {cmd: '/bin/llama-server --port 5000'}}", "models.a.cmd: --port 5000 differs from the port of url "
     "http://127.0.0.1:3004"),
    ("models: {a: {cmd: [/bin/llama-server, --port=5001], url: 'http://127.0.0.1:5000'}}",
     "models.a.cmd: --port 5001 differs"),
])
def test_errors_name_the_key(text, message):
    with pytest.raises(ConfigError) as e:
        parse(text)
    assert message in e.value.message


@pytest.mark.parametrize("value, expected", [
    ("7.5G", int(7.5 * (1 << 30))), ("512M", 512 << 20), ("1200K", 1200 << 10), ("2T", 2 << 40),
    ("6.8GiB", int(6.8 * (1 << 30))), ("1g", 1 << 30), ("8Gi", 8 << 30), ("8gb", 8 << 30),
    ("8000MB", 8000 << 20), ("3kib", 3 << 10), ("64B", 64),
])
def test_sizes(value, expected):
    c = cfg(f"memory_budget: {value!r}\nmodels: {{a: a.service}}" if isinstance(value, str)
            else f"memory_budget: {value}\nmodels: {{a: a.service}}")
    assert c.memory_budget == expected


@pytest.mark.parametrize("value, expected", [
    ("30", 30.0), ("30s", 30.0), ("10m", 600.0), ("2h", 7200.0), ("500ms", 0.5), ("1.5", 1.5), ("off", None),
    ("false", None), ("0", None),
])
def test_idle_unload_durations(value, expected):
    assert cfg(f"idle_unload: {value}\nmodels: {{a: a.service}}").models["a"].idle_unload == expected


def test_scheduling_defaults_and_overrides():
    c = cfg("models: {a: a.service}")
    a = c.models["a"]
    assert (c.memory_budget, c.max_wait, c.max_queue, c.preload) == (None, 600.0, 256, ())
    assert (a.memory, a.min_loaded, a.idle_unload) == (None, None, None)
    c = cfg("""
        memory_budget: 7.5G
        min_loaded: 20s
        idle_unload: 30m
        max_wait: 10m
        max_queue: 8
        preload: [coder, embed]
        models:
          qwen: {unit: q.service, memory: 6.8G, aliases: [coder], idle_unload: off}
          embed: {unit: e.service, url: 'http://127.0.0.1:3005', memory: 1.2G, min_loaded: 1m}
    """)
    qwen, embed = c.models["qwen"], c.models["embed"]
    assert (c.max_wait, c.max_queue, c.preload) == (600.0, 8, ("qwen", "embed"))
    assert (qwen.memory, qwen.min_loaded, qwen.idle_unload) == (int(6.8 * (1 << 30)), 20.0, None)
    assert (embed.memory, embed.min_loaded, embed.idle_unload) == (int(1.2 * (1 << 30)), 60.0, 1800.0)


@pytest.mark.parametrize("value, expected", [("5m", 300.0), ("300", 300.0), ("1h", 3600.0), ("90s", 90.0)])
def test_health_timeout_is_a_duration(value, expected):
    c = cfg(f"health_timeout: {value}\nmodels: {{a: a.service, b: {{unit: b.service, health_timeout: {value}}}}}")
    assert c.models["a"].health_timeout == c.models["b"].health_timeout == expected


def test_a_cmd_on_its_urls_port_passes():
    c = cfg("models: {a: {cmd: '/bin/llama-server --port 5000', url: 'http://127.0.0.1:5000'}}")
    assert c.models["a"].cmd[-2:] == ("--port", "5000")


def test_every_problem_is_reported_with_its_file_and_line(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(textwrap.dedent("""\
        listen: 127.0.0.1:3002
        ttl: 60
        models:
          coder:
            unit: llama-server@coder.service
            aliases: c, d
            memory: 6
          tiny:
            cmd: /usr/bin/llama-server --port ${PORT}
          other:
            cmd: /usr/bin/llama-server --port 5000
        max_wait: soon
    """))
    with pytest.raises(ConfigError) as e:
        load(path)
    assert [p.split(": ")[0] for p in e.value.problems] == [
        f"{path}:2", f"{path}:6", f"{path}:7", f"{path}:9", f"{path}:11", f"{path}:12"]
    assert [p.split(": ")[1] for p in e.value.problems] == [
        "ttl", "models.coder.aliases", "models.coder.memory", "models.tiny.cmd", "models.other.cmd", "max_wait"]
    assert e.value.message == "\n".join(e.value.problems)


def test_a_refused_model_is_no_unknown_model_to_preload():
    with pytest.raises(ConfigError) as e:
        cfg("preload: [c]\nmodels: {coder: {unit: c.service, aliases: [c], memory: 6}}")
    assert e.value.problems == ("models.coder.memory: 6 bytes? write 6G (or K, M, T: sizes need a unit)",)


def test_a_yaml_error_names_the_file_and_line(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("models:\n  a: [\n")
    with pytest.raises(ConfigError) as e:
        load(path)
    assert e.value.message.startswith(f"{path}:3: not valid YAML: ")
    assert "<unicode string>" not in e.value.message


def test_ipv6_listen():
    c = cfg("listen: '[::1]:3002'\nmodels: {a: a.service}")
    assert (c.listen_host, c.listen_port, c.listen) == ("::1", 3002, "[::1]:3002")


def test_plus_in_name_is_escaped_for_the_transient_unit():
    c = cfg("models: {'a+b': {cmd: [/bin/sleep, 100]}}")
    assert c.models["a+b"].unit == "llm-switch-a\\x2bb.service"
    assert c.models["a+b"].cmd == ("/bin/sleep", "100")


def test_load_missing_file_says_so(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config"):
        load(tmp_path / "nope.yaml")


def test_find_path_order(tmp_path, monkeypatch):
    monkeypatch.delenv("LLM_SWITCH_CONFIG", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.chdir(tmp_path)
    assert str(find_path(None)) == "config.yaml"
    user = tmp_path / "xdg" / "llm-switch" / "config.yaml"
    user.parent.mkdir(parents=True)
    user.write_text("models: {a: a.service}")
    assert find_path(None) == user
    monkeypatch.setenv("LLM_SWITCH_CONFIG", "/etc/x.yaml")
    assert str(find_path(None)) == "/etc/x.yaml"
    assert str(find_path("/given.yaml")) == "/given.yaml"


# -- api_keys and exposure ------------------------------------------------------------------------

KEY = "k" * 16
MODELS = "models: {a: {unit: a.service, aliases: [aa]}, b: b.service}\n"


def test_api_keys_forms(tmp_path, monkeypatch):
    key_file = tmp_path / "keys"
    key_file.write_text("# for the laptop\n\n" + "f" * 20 + "\n  " + "g" * 24 + "  \n")
    key_file.chmod(0o600)
    monkeypatch.setenv("LLMT_KEY", "e" * 32 + "\n")
    c = cfg(f"""
        listen: 0.0.0.0:3002
        api_keys:
          - {KEY}
          - {{key: {"m" * 16}, name: roo, models: [aa]}}
          - {{key_file: {key_file}, name: laptop}}
          - {{key_env: LLMT_KEY}}
        {MODELS}""")
    assert [(k.secret, k.name, k.models) for k in c.api_keys] == [
        (KEY, "key-0", None), ("m" * 16, "roo", frozenset({"a"})),
        ("f" * 20, "laptop", None), ("g" * 24, "laptop", None), ("e" * 32, "key-3", None)]
    assert not c.warnings
    assert KEY not in repr(c)  # a config printed by accident shows no key


def test_key_file_relative_to_the_config_and_readable_by_others(tmp_path):
    (tmp_path / "api-key").write_text(KEY + "\n")
    (tmp_path / "api-key").chmod(0o644)
    (tmp_path / "config.yaml").write_text(f"api_keys: [{{key_file: api-key}}]\n{MODELS}")
    c = load(tmp_path / "config.yaml")
    assert c.api_keys[0].secret == KEY
    assert c.warnings == (f"api_keys[0].key_file: {tmp_path / 'api-key'} can be read by other users; chmod 600 it",)


def test_web_settings():
    c = parse(f"allowed_hosts: [LLM.home.arpa, '::1', 10.0.0.5]\n"
              f"cors_origins: [http://localhost:8080/, 'HTTPS://chat.example:443', 'chrome-extension://abc']\n"
              f"{MODELS}")
    assert c.allowed_hosts == {"llm.home.arpa", "::1", "10.0.0.5"}
    assert c.cors_origins == {"http://localhost:8080", "https://chat.example", "chrome-extension://abc"}
    assert c.max_json_bytes == 16 << 20
    assert parse(MODELS).cors_origins == frozenset() and parse(MODELS).allowed_hosts == frozenset()


@pytest.mark.parametrize("text, mode, warned", [
    (f"api_keys: [{KEY}]\n{MODELS}", 0o644, "api_keys[0]"),
    (f"api_keys: [{{key: {KEY}, name: x}}]\n{MODELS}", 0o640, "api_keys[0]"),
    (f"models: {{a: {{unit: a.service, backend_api_key: {KEY}}}}}", 0o604, "models.a.backend_api_key"),
    (f"api_keys: [{KEY}]\n{MODELS}", 0o600, None),
    (f"api_keys: [{{key_env: HOME}}]\n{MODELS}", 0o644, None),  # no key in the file
])
def test_a_key_written_in_a_readable_config_is_warned(tmp_path, monkeypatch, text, mode, warned):
    monkeypatch.setenv("HOME", "h" * 20)
    path = tmp_path / "config.yaml"
    path.write_text(text)
    path.chmod(mode)
    warnings = load(path).warnings
    if warned is None:
        assert warnings == ()
    else:
        assert warnings == (f"{warned}: a key written in this file, which other users can read (mode {mode:o}); "
                            f"chmod 600 {path}, or move the key to a key_file",)
        assert KEY not in warnings[0]


def test_backend_api_key_is_kept_out_of_repr():
    c = cfg(f"models: {{a: {{unit: a.service, backend_api_key: {'b' * 20}}}}}")
    assert c.models["a"].backend_api_key == "b" * 20
    assert "b" * 20 not in repr(c)


@pytest.mark.parametrize("listen", ["127.0.0.1:3002", "127.0.0.2:3002", "localhost:3002", "'[::1]:3002'"])
def test_loopback_needs_no_keys(listen):
    assert cfg(f"listen: {listen}\n{MODELS}").api_keys == ()


@pytest.mark.parametrize("listen", ["0.0.0.0:3002", "'[::]:3002'", "192.168.1.5:3002", "myhost:3002"])
def test_off_loopback_without_keys_is_refused_unless_allowed(listen):
    with pytest.raises(ConfigError) as e:
        cfg(f"listen: {listen}\n{MODELS}")
    assert e.value.message.startswith("listen: ")
    assert "api_keys" in e.value.message and "setup.sh --lan" in e.value.message
    assert cfg(f"listen: {listen}\nallow_unauthenticated: true\n{MODELS}").allow_unauthenticated


@pytest.mark.parametrize("text, message", [
    ("api_keys: [short]", "api_keys[0].key: a key must be at least 16 characters (this one has 5)"),
    ("api_keys: 7", "api_keys: must be a list of keys"),
    ("api_keys: [[x]]", "api_keys[0]: must be a key or a mapping"),
    (f"api_keys: [{{key: {KEY}, key_env: X}}]", "api_keys[0]: needs exactly one of key, key_file or key_env"),
    ("api_keys: [{name: x}]", "api_keys[0]: needs exactly one of key, key_file or key_env"),
    (f"api_keys: [{{key: {KEY}, colour: red}}]", "api_keys[0].colour: unknown key"),
    (f"api_keys: [{{key: {KEY}, models: [c]}}]", "api_keys[0].models: unknown model 'c' (known: a, b)"),
    (f"api_keys: [{{key: {KEY}, models: []}}]", "api_keys[0].models: must be a list of model names"),
    (f"api_keys: [{{key: {KEY}, name: ''}}]", "api_keys[0].name: must be a non-empty string"),
    (f"api_keys: [{KEY}, {'x' * 16}, {KEY}]", "api_keys[2].key: the same key as api_keys[0].key"),
    ("api_keys: ['kkkkkkkk kkkkkkkk']", "api_keys[0].key: a key may hold printable ASCII characters only"),
    ("api_keys: [{key_env: LLMT_NOT_SET_ANYWHERE}]",
     "api_keys[0].key_env: environment variable LLMT_NOT_SET_ANYWHERE is not set or empty"),
    ("api_keys: [{key_file: /nonexistent/llmt-keys}]", "api_keys[0].key_file: cannot read /nonexistent/llmt-keys"),
    ("max_connections: 0", "max_connections: must be a positive integer"),
    ("header_timeout: soon", "header_timeout: must be a duration"),
    ("metrics_public: yes please", "metrics_public: must be true or false"),
    ("models: {a: {unit: a.service, backend_api_key: 'a b'}}", "models.a.backend_api_key: must be the key"),
])
def test_key_errors_name_the_key_path_and_never_the_key(text, message):
    if not text.startswith("models:"):
        text += "\n" + MODELS
    with pytest.raises(ConfigError) as e:
        cfg(text)
    assert e.value.message.startswith(message), e.value.message
    assert KEY not in e.value.message and "short" not in e.value.message


def test_key_file_errors_name_the_line(tmp_path):
    (tmp_path / "keys").write_text(KEY + "\n\ntooshort\n")
    with pytest.raises(ConfigError) as e:
        cfg(f"api_keys: [{{key_file: {tmp_path / 'keys'}}}]\n{MODELS}")
    assert e.value.message.startswith(f"api_keys[0].key_file ({tmp_path / 'keys'} line 3): a key must be at least 16")
    (tmp_path / "empty").write_text("# nothing yet\n")
    with pytest.raises(ConfigError, match=r"holds no key"):
        cfg(f"api_keys: [{{key_file: {tmp_path / 'empty'}}}]\n{MODELS}")


def test_prompt_cache_defaults_and_overrides(monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", "/state")
    c = cfg("models: {a: a.service}")
    assert (c.prompt_cache.dir, c.prompt_cache.max_bytes, c.prompt_cache.min_tokens) == (
        "/state/llm-switch/slots", 20 << 30, 512)
    assert c.models["a"].prompt_cache is True
    c = cfg("""
        prompt_cache: false
        prompt_cache_dir: ~/cache/slots/
        prompt_cache_max: 2G
        prompt_cache_min_tokens: 2000
        models:
          a: a.service
          b: {unit: b.service, prompt_cache: true}
    """)
    assert c.prompt_cache.dir == os.path.expanduser("~/cache/slots")
    assert (c.prompt_cache.max_bytes, c.prompt_cache.min_tokens) == (2 << 30, 2000)
    assert (c.models["a"].prompt_cache, c.models["b"].prompt_cache) == (False, True)


# -- issue 22: memory learned from llama-server, memory_budget: auto, unlisted ------------------


def _meminfo_total() -> int:
    with open("/proc/meminfo") as f:
        return next(int(ln.split()[1]) * 1024 for ln in f if ln.startswith("MemTotal:"))


@pytest.mark.parametrize("top, budget, auto, source", [
    ("", None, False, None),
    ("memory_budget: 8G\n", 8 << 30, False, "config"),
    ("memory_budget: auto\n", _meminfo_total() - (512 << 20), True, "MemTotal"),
    ("memory_budget: auto\nmemory_reserve: 2G\n", _meminfo_total() - (2 << 30), True, "MemTotal"),
    ("memory_budget: auto\nmemory_device: Host\nmemory_reserve: 1G\n", _meminfo_total() - (1 << 30), True, "MemTotal"),
    ("memory_budget: auto\nmemory_device: CUDA0\n", None, True, "first memory breakdown"),
])
def test_memory_budget_auto_on_this_cpu_only_machine_is_memtotal_less_the_reserve(top, budget, auto, source):
    config = parse(top + "models:\n  a: a.service\n")
    assert (config.memory_budget, config.memory_budget_auto) == (budget, auto)
    assert source is None and config.memory_budget_from is None or source in config.memory_budget_from


@pytest.mark.parametrize("top, memory, expected", [
    ("", "", (None, False)),
    ("", "    memory: auto\n", (None, True)),
    ("memory_budget: 8G\n", "", (None, True)),  # under a budget a model with no memory is auto
    ("memory_budget: 8G\n", "    memory: 2G\n", (2 << 30, False)),
])
def test_model_memory_auto(top, memory, expected):
    model = parse(top + "models:\n  a:\n    unit: a.service\n" + memory).models["a"]
    assert (model.memory, model.memory_auto) == expected


@pytest.mark.parametrize("text, message", [
    ("memory_budget: lots\n", "memory_budget"),
    ("memory_reserve: -1\n", "memory_reserve"),
    ("memory_device: ''\n", "memory_device"),
    ("models_x: 1\n", "unknown key"),
])
def test_bad_memory_keys_name_the_key(text, message):
    with pytest.raises(ConfigError, match=message):
        parse(text + "models:\n  a: a.service\n")


def test_unlisted_is_a_boolean():
    assert parse("models:\n  a:\n    unit: a.service\n    unlisted: true\n").models["a"].unlisted
    with pytest.raises(ConfigError, match="models.a.unlisted"):
        parse("models:\n  a:\n    unit: a.service\n    unlisted: 1\n")
