"""`llm-switch litellm-config [--host URL ...]`: a LiteLLM proxy config (`model_list`) for the
models of one or more switches, one switch per machine.

Each switch is asked for its models (`GET /v1/models`); every name and alias becomes a
deployment of that host. A name served by two hosts is two deployments of one `model_name`, which
LiteLLM load-balances; a name no host serves is in no entry, so LiteLLM refuses it (there is no
wildcard). Exit status: 0, or 3 when a switch does not answer (nothing is printed then), as in
every subcommand (cli/client.py).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import yaml

from .client import NotRunning, Refused, error_message, read_config, reason_of, url_of

REQUEST_TIMEOUT = 600  # s: a request may wait for its model to load


def base_url(host: str) -> str:
    """`host`, `host:port` or a URL (with or without /v1) → the switch's base URL."""
    url = host.strip().rstrip("/")
    if "://" not in url:
        url = "http://" + url
    return url[: -len("/v1")] if url.endswith("/v1") else url


def model_list(hosts: list[tuple[str, list[dict]]], api_key: str = "none") -> dict:
    """The LiteLLM config for `(base URL, /v1/models data)` of each switch. Pure."""
    entries = []
    for url, models in hosts:
        for m in models:
            names = [m["id"], *(a for a in m.get("aliases") or () if isinstance(a, str))]
            for name in names:
                entries.append({"model_name": name,
                                "litellm_params": {"model": f"openai/{name}", "api_base": f"{url}/v1",
                                                   "api_key": api_key}})
    return {"model_list": entries,
            "router_settings": {"routing_strategy": "simple-shuffle"},
            "litellm_settings": {"request_timeout": REQUEST_TIMEOUT}}


def _models(url: str, api_key: str | None) -> list[dict]:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key and api_key != "none" else {}
    request = urllib.request.Request(url + "/v1/models", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            data = json.loads(resp.read())
    except urllib.error.HTTPError as e:
        raise Refused(f"{url}/v1/models: {error_message(e)}") from None
    except (OSError, ValueError) as e:
        raise NotRunning(url, reason_of(e) if isinstance(e, OSError) else f"not a switch's model list ({e})") from None
    models = data.get("data") if isinstance(data, dict) else None
    if not isinstance(models, list) or not all(isinstance(m, dict) and isinstance(m.get("id"), str) for m in models):
        raise NotRunning(url, "/v1/models is not a switch's model list: something else listens there")
    return models


def run(args: Any) -> int:
    if args.host:
        urls = [base_url(h) for h in args.host]
    else:
        config, _ = read_config(getattr(args, "config", None))
        urls = [url_of(config.listen) if config else "http://127.0.0.1:3002"]
    hosts = [(url, _models(url, args.api_key)) for url in urls]  # NotRunning, Refused: cli/__init__.py
    print(f"# LiteLLM proxy config for {', '.join(urls)}; made by `llm-switch litellm-config`")
    print("# run: litellm --config THIS_FILE --port 4000")
    print(yaml.safe_dump(model_list(hosts, args.api_key or "none"), sort_keys=False), end="")
    return 0
