"""systemd-llm-switch: one OpenAI-compatible URL for several local LLMs, switched under systemd --user."""

__version__ = "0.1.0"
