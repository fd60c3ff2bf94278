"""Tool-call repair: broken JSON arguments, calls written as text, streams kept streaming.

Pure code, no I/O. Three entry points for the relay:

- `repair_request(body)`: assistant history in a request, before it reaches llama-server
  (which answers 500 on malformed arguments).
- `repair_completion(body, tools_offered)`: a non-streaming chat completion.
- `StreamRepair(tools_offered)`: a chat-completions SSE stream, fed bytes in any split.

Rules shared by all three: arguments that parse as a JSON object stay byte-identical; anything
else is repaired with json-repair (non-ASCII kept as is) into a JSON object string, or becomes
"{}" with a warning naming the tool. Message text is never rewritten, except that a Qwen/Hermes
`<tool_call>…</tool_call>` block in the content of a response whose request offered tools is
lifted out into a structured tool call.
"""

from .arguments import repair_arguments, repair_request
from .stream import StreamRepair, repair_completion
from .text_calls import parse_text_call

__all__ = ["StreamRepair", "parse_text_call", "repair_arguments", "repair_completion", "repair_request"]
