"""What llama-server says about itself, learned once and kept: the memory breakdown it prints at
start and exit, what `--fit` changed, and the memory budget taken from a device's total
(docs/design.md, "Who may run together"; issue 22). Pure but for `store.py`'s one JSON file."""
