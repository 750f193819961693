"""Bindings as JSON, for the stores that keep them outside this process.

JSON keeps a stored binding readable with ``sqlite3`` or ``redis-cli`` while
debugging, and Python writes floats in it exactly (shortest round-trip form), so
``expires_at`` comes back as it went in. Field names are spelled out and absent
optional fields are written as ``null`` rather than left out, so a record never
depends on the defaults of the code that reads it.
"""

from __future__ import annotations

import json
from typing import Any

from sipproxy.location import Binding, Flow

__all__ = [
    "binding_from_json",
    "binding_to_json",
    "flow_from_json",
    "flow_to_json",
    "params_from_json",
    "params_to_json",
    "path_from_json",
    "path_to_json",
]


def flow_to_json(flow: Flow) -> str:
    """Encode a flow as a JSON object."""
    return _dumps(_flow_dict(flow))


def flow_from_json(text: str) -> Flow:
    """Decode :func:`flow_to_json` output."""
    return _flow(json.loads(text))


def params_to_json(params: tuple[tuple[str, str | None], ...]) -> str:
    """Encode Contact parameters as a list of ``[name, value-or-null]`` pairs."""
    return _dumps([list(p) for p in params])


def params_from_json(text: str) -> tuple[tuple[str, str | None], ...]:
    """Decode :func:`params_to_json` output."""
    return _params(json.loads(text))


def path_to_json(path: tuple[str, ...]) -> str:
    """Encode Path header values as a JSON list."""
    return _dumps(list(path))


def path_from_json(text: str) -> tuple[str, ...]:
    """Decode :func:`path_to_json` output."""
    return tuple(str(p) for p in json.loads(text))


def binding_to_json(binding: Binding) -> str:
    """Encode a whole binding as one JSON object."""
    return _dumps(
        {
            "aor": binding.aor,
            "contact": binding.contact,
            "expires_at": binding.expires_at,
            "registered_at": binding.registered_at,
            "call_id": binding.call_id,
            "cseq": binding.cseq,
            "flow": _flow_dict(binding.flow),
            "q": binding.q,
            "params": [list(p) for p in binding.params],
            "user_agent": binding.user_agent,
            "path": list(binding.path),
            "instance_id": binding.instance_id,
            "reg_id": binding.reg_id,
        }
    )


def binding_from_json(text: str | bytes) -> Binding:
    """Decode :func:`binding_to_json` output.

    :raises ValueError: not a binding record (``KeyError`` and ``TypeError``
        from a malformed record are turned into it).
    """
    try:
        data = json.loads(text)
        return Binding(
            aor=str(data["aor"]),
            contact=str(data["contact"]),
            expires_at=float(data["expires_at"]),
            registered_at=float(data["registered_at"]),
            call_id=str(data["call_id"]),
            cseq=int(data["cseq"]),
            flow=_flow(data["flow"]),
            q=float(data["q"]),
            params=_params(data["params"]),
            user_agent=_optional_str(data["user_agent"]),
            path=tuple(str(p) for p in data["path"]),
            instance_id=_optional_str(data["instance_id"]),
            reg_id=None if data["reg_id"] is None else int(data["reg_id"]),
        )
    except (KeyError, TypeError) as error:
        raise ValueError(f"not a binding record: {error!r}") from error


def _dumps(value: Any) -> str:
    # ensure_ascii=False keeps non-ASCII contacts readable; separators save bytes.
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _flow_dict(flow: Flow) -> dict[str, Any]:
    return {
        "transport": flow.transport,
        "local_host": flow.local_host,
        "local_port": flow.local_port,
        "remote_host": flow.remote_host,
        "remote_port": flow.remote_port,
        "connection_id": flow.connection_id,
        "owner": flow.owner,
    }


def _flow(data: dict[str, Any]) -> Flow:
    return Flow(
        transport=str(data["transport"]),
        local_host=str(data["local_host"]),
        local_port=int(data["local_port"]),
        remote_host=str(data["remote_host"]),
        remote_port=int(data["remote_port"]),
        connection_id=_optional_str(data["connection_id"]),
        owner=_optional_str(data["owner"]),
    )


def _params(data: list[list[Any]]) -> tuple[tuple[str, str | None], ...]:
    return tuple((str(name), _optional_str(value)) for name, value in data)


def _optional_str(value: Any) -> str | None:
    return None if value is None else str(value)
