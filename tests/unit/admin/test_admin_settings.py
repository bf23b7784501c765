"""Admin settings and the times admins type."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from node.admin.timespec import parse_time
from node.config import describe, load_settings
from node.errors import ConfigError

NOW = datetime(2026, 5, 6, 15, 30, tzinfo=UTC)


def test_secrets_never_reach_describe_or_the_log():
    settings = load_settings(
        None,
        {
            "CXRNODE_ADMIN_TOKEN": "a-very-secret-admin-token",
            "CXRNODE_DB_URL": "postgresql+psycopg://node:pa%40ss@db.local:5432/cxrnode",
        },
    )
    shown = describe(settings)
    assert shown["admin_token"] == "***"
    assert shown["database_url"] == "postgresql+psycopg://node:***@db.local:5432/cxrnode"
    assert "secret" not in str(shown) and "pa%40ss" not in str(shown)


@pytest.mark.parametrize(
    ("env", "message"),
    [({"CXRNODE_ROLE": "gpu"}, "role"), ({"CXRNODE_ADMIN_PORT": "70000"}, "admin_port")],
)
def test_bad_admin_settings_are_config_errors(env, message):
    with pytest.raises(ConfigError, match=message):
        load_settings(None, env)


def test_node_name_defaults_to_the_host_name():
    import socket

    assert load_settings(None, {}).effective_node_name == socket.gethostname()
    assert load_settings(None, {"CXRNODE_NODE_NAME": "gpu-2"}).effective_node_name == "gpu-2"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("today", datetime(2026, 5, 6, tzinfo=UTC)),
        ("yesterday", datetime(2026, 5, 5, tzinfo=UTC)),
        ("24h", datetime(2026, 5, 5, 15, 30, tzinfo=UTC)),
        ("7d", datetime(2026, 4, 29, 15, 30, tzinfo=UTC)),
        ("90m", datetime(2026, 5, 6, 14, 0, tzinfo=UTC)),
        ("2026-05-01", datetime(2026, 5, 1, tzinfo=UTC)),
        ("2026-05-01T08:00+02:00", datetime(2026, 5, 1, 6, 0, tzinfo=UTC)),
        ("2026-05-01T08:00:00Z", datetime(2026, 5, 1, 8, 0, tzinfo=UTC)),
    ],
)
def test_times_admins_type(text, expected):
    assert parse_time(text, now=NOW) == expected


def test_a_time_that_is_none_of_them_says_what_is_accepted():
    with pytest.raises(ValueError, match="24h"):
        parse_time("last tuesday", now=NOW)


@pytest.mark.parametrize(
    "text",
    ["99999999999999999999d", "5000000d", "0001-01-01T00:00+01:00", "9999-12-31T23:59-01:00"],
)
def test_a_time_out_of_datetimes_range_is_a_value_error_not_an_overflow(text):
    with pytest.raises(ValueError, match="out of range"):
        parse_time(text, now=NOW)
