"""Real clients against the switch, and the issue's "done when" tried as a new user would."""

from __future__ import annotations

import sys
from pathlib import Path

import openai
import pytest

from support.harness import free_port


def console_script() -> list[str]:
    """``llm-switch`` as pip installed it next to this Python."""
    script = Path(sys.executable).with_name("llm-switch")
    assert script.exists(), f"{script} missing: is the package installed (pip install -e .)?"
    return [str(script)]


def test_new_user_two_units_on_one_port_with_the_openai_client(deploy, tiny_models, user_manager):
    """pip install ., a config.yaml with two llama-server units on one port, llm-switch serve:
    the openai client lists the models, gets a reply from one, a streamed reply from the other,
    and systemd shows only the second unit active afterwards."""
    port = free_port()
    coder = deploy.llama_unit("coder", tiny_models["a"], port=port,
                              unit=f"llama-server@coder-{deploy.tag}.service")
    thinker = deploy.llama_unit("thinker", tiny_models["b"], port=port,
                                unit=f"llama-server@thinker-{deploy.tag}.service")
    config = deploy.write_config(raw=f"""\
listen: 127.0.0.1:{free_port()}
backend: http://127.0.0.1:{port}
models:
  coder: {coder.unit}
  thinker:
    unit: {thinker.unit}
    aliases: [think]
""")
    daemon = deploy.start(config, command=console_script())
    client = openai.OpenAI(base_url=daemon.url + "/v1", api_key="unused", timeout=120,
                           max_retries=0)

    listed = client.models.list()
    assert [m.id for m in listed.data] == ["coder", "thinker"]

    reply = client.chat.completions.create(
        model="coder", messages=[{"role": "user", "content": "hello"}], max_tokens=12)
    assert reply.choices[0].message.role == "assistant"
    assert isinstance(reply.choices[0].message.content, str)
    assert reply.usage is not None and reply.usage.completion_tokens > 0

    stream = client.chat.completions.create(
        model="think", messages=[{"role": "user", "content": "hello"}], max_tokens=16,
        stream=True)
    chunks = list(stream)
    assert len(chunks) > 2
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

    assert user_manager.active_units(f"llama-server@*-{deploy.tag}.service") == [thinker.unit]


def test_openai_client_sees_the_switchs_errors(deploy, tiny_models):
    a = deploy.llama_unit("a", tiny_models["a"])
    daemon = deploy.up({"a": {"unit": a.unit, "url": a.url}})
    client = openai.OpenAI(base_url=daemon.url + "/v1", api_key="unused", timeout=120,
                           max_retries=0)
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    assert info.value.status_code == 404
    assert "a" in info.value.message
    assert info.value.code == "model_not_found"

    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("nope")
    assert client.models.retrieve("a").id == "a"


def test_openai_client_completions_and_embeddings(deploy, tiny_models):
    """Other /v1 routes are forwarded too (llama-server serves embeddings with --embedding)."""
    a = deploy.llama_unit("a", tiny_models["a"])
    e = deploy.llama_unit("e", tiny_models["b"], extra_args=["--embedding", "--pooling", "mean"])
    daemon = deploy.up({"a": {"unit": a.unit, "url": a.url}, "e": {"unit": e.unit, "url": e.url}})
    client = openai.OpenAI(base_url=daemon.url + "/v1", api_key="unused", timeout=120,
                           max_retries=0)
    done = client.completions.create(model="a", prompt="the model", max_tokens=8)
    assert done.choices and isinstance(done.choices[0].text, str)
    emb = client.embeddings.create(model="e", input=["hello", "world"])
    assert len(emb.data) == 2 and len(emb.data[0].embedding) == 64
