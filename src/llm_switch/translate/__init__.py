"""Pure translators between the OpenAI API that llama-server speaks and the other clients' APIs:
`ollama` (requests, answers, SSE → NDJSON streams) and `anthropic` (history repair, error
shapes). No I/O, no clock unless given; table-tested (tests/test_translate.py). The routes in
http/ choose them; docs/design.md ("One request pipeline") says where they run."""
