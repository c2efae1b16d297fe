"""The models of a session's messages: the one a reply reads agrees with the stored one."""

from __future__ import annotations

import msgspec
import pytest
from pydantic import ValidationError
from pydantic_core import PydanticUndefined

from storage.models import HistoryMessage, MessageRecord


def test_a_replys_history_message_has_the_fields_of_a_stored_message() -> None:
    # HistoryMessage (msgspec, a reply's read) mirrors MessageRecord (pydantic): the
    # same fields, types and defaults, but the versions the document no longer holds.
    record = {
        name: (str(field.annotation).replace("typing.", ""), field.default)
        for name, field in MessageRecord.model_fields.items()
        if name != "versions"
    }
    history = {
        f.name: (str(f.type).replace("typing.", ""), f.default)
        for f in msgspec.structs.fields(HistoryMessage)
    }
    assert list(history) == list(record)
    for name, (kind, default) in record.items():
        expected = msgspec.NODEFAULT if default is PydanticUndefined else default
        assert history[name] == (kind, expected), name


def test_a_history_message_is_refused_as_a_record_is() -> None:
    good = {"id": "a", "role": "user", "content": "hi", "timestamp": "t", "seq": 1}
    assert msgspec.convert(good, HistoryMessage).seq == MessageRecord(**good).seq == 1
    for bad in ({**good, "seq": "one"}, {k: v for k, v in good.items() if k != "content"}):
        with pytest.raises(msgspec.ValidationError):
            msgspec.convert(bad, HistoryMessage)
        with pytest.raises(ValidationError):
            MessageRecord.model_validate(bad)
