"""Assertions more than one test module makes."""

from __future__ import annotations


def assert_openai_error(status: int, body, want_status: int, want_type: str, want_code: str):
    assert status == want_status, body
    assert isinstance(body, dict) and set(body) == {"error"}, body
    err = body["error"]
    assert isinstance(err["message"], str) and err["message"], err
    assert (err["type"], err["code"]) == (want_type, want_code), err
    assert "Traceback" not in err["message"]
    return err["message"]
