"""More than one machine: one switch per machine, a real LiteLLM proxy in front, its model list
made by `llm-switch litellm-config`. Two switches on two loopback ports stand for two machines,
each with its own private systemd --user and its own models."""

from __future__ import annotations

import openai
import pytest

from support import harness
from support.litellm_proxy import LiteLLMProxy, litellm_venv


@pytest.fixture(scope="module")
def litellm_exe():
    return litellm_venv()  # made once and cached; fails loudly (never skips) when it cannot be


def test_litellm_routes_each_model_to_its_switch(deploy, tiny_models, user_manager, llama_server, tmp_path,
                                                  litellm_exe):
    second = harness.UserManager()
    other = harness.Deployment(second, tmp_path / "box2", deploy.tag + "b", llama=llama_server)
    proxy = None
    try:
        # box 1: coder and shared; box 2: thinker and shared
        coder = deploy.llama_unit("coder", tiny_models["a"])
        shared1 = deploy.llama_unit("shared", tiny_models["b"])
        box1 = deploy.up({"coder": {"unit": coder.unit, "url": coder.url},
                          "shared": {"unit": shared1.unit, "url": shared1.url, "aliases": ["both"]}})
        thinker = other.llama_unit("thinker", tiny_models["b"])
        shared2 = other.llama_unit("shared", tiny_models["b"])
        box2 = other.up({"thinker": {"unit": thinker.unit, "url": thinker.url},
                         "shared": {"unit": shared2.unit, "url": shared2.url}})

        made = harness.run_cli(["litellm-config", "--host", box1.url, "--host", box2.url + "/v1"], {})
        assert made.returncode == 0, made.stderr
        config = tmp_path / "litellm.yaml"
        config.write_text(made.stdout)
        proxy = LiteLLMProxy(litellm_exe, config, tmp_path / "litellm.log")
        client = openai.OpenAI(base_url=proxy.url + "/v1", api_key="unused", timeout=120, max_retries=0)

        on_box1 = lambda: user_manager.active_units(f"llama-server-{deploy.tag}@*")  # noqa: E731
        on_box2 = lambda: second.active_units(f"llama-server-{other.tag}@*")  # noqa: E731

        def ask(model: str) -> str:
            reply = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}],
                                                   max_tokens=4)
            assert reply.choices[0].message.role == "assistant"
            return reply.model

        ask("coder")
        assert (on_box1(), on_box2()) == ([coder.unit], [])  # box 1's switch started it
        ask("thinker")
        assert (on_box1(), on_box2()) == ([coder.unit], [thinker.unit])
        # one name on both boxes: LiteLLM balances it; each box's switch starts its own unit
        for _ in range(20):
            ask("shared")
            if shared1.runs() and shared2.runs():
                break
        assert shared1.runs() and shared2.runs(), "LiteLLM sent every request for `shared` to one box"
        ask("both")  # an alias is a model name too

        with pytest.raises(openai.BadRequestError) as info:  # a name no box serves is not routed
            ask("nope")
        assert "nope" in info.value.message
        assert "nope" not in box1.log() and "nope" not in box2.log()
    except BaseException:
        if proxy is not None:
            print(proxy.log()[-4000:])
        print(other.debug_dump())
        raise
    finally:
        if proxy is not None:
            proxy.close()
        other.close()
        second.close()
