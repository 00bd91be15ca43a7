"""Options: defaults, validation, environment parsing, precedence."""

from __future__ import annotations

import dataclasses

import pytest

from ddbcache_hooks.config import OPTIONS, Settings, TablePolicy, from_environment
from ddbcache_hooks.errors import ConfigurationError


def test_defaults_match_the_reference() -> None:
    settings = Settings.resolve({})
    assert settings.ttl == 3600 and settings.namespace == "CC"
    assert {k: settings.ttl_seconds(k) for k in ("item", "item_negative", "query", "scan")} == {
        "item": 3600,
        "item_negative": 3600,
        "query": 3600,
        "scan": 3600,
    }


def test_ttl_config_overrides_per_kind() -> None:
    settings = Settings.resolve({"ttl": 100, "ttl_config": {"query": 5}})
    assert settings.ttl_seconds("query") == 5 and settings.ttl_seconds("item") == 100


def test_every_option_has_a_documented_variable_and_valid_default() -> None:
    names = [o.name for o in OPTIONS]
    assert len(names) == len(set(names))
    for option in OPTIONS:
        assert option.env == "DDBCACHE_" + option.name.upper() and option.doc
        option.check(option.name, option.default)  # defaults validate


def test_environment_values_are_parsed_and_named_on_error() -> None:
    env = {
        "DDBCACHE_TTL": "60",
        "DDBCACHE_TTL_CONFIG": "item=5, query=7",
        "DDBCACHE_NAMESPACE": "app",
        "DDBCACHE_EXCLUDE_TABLES": "audit*, logs",
        "DDBCACHE_KEY_SCHEMA": "orders=pk:sk,users=id",
        "DDBCACHE_CONSISTENCY": "strict",
    }
    values = from_environment(env)
    assert values["ttl"] == 60 and values["ttl_config"] == {"item": 5, "query": 7}
    assert values["exclude_tables"] == ("audit*", "logs")
    assert values["key_schema"] == {"orders": ("pk", "sk"), "users": ("id",)}
    for bad, name in (
        ({"DDBCACHE_TTL": "abc"}, "DDBCACHE_TTL"),
        ({"DDBCACHE_TTL": "-1"}, "DDBCACHE_TTL"),
        ({"DDBCACHE_TTL_CONFIG": "item"}, "DDBCACHE_TTL_CONFIG"),
        ({"DDBCACHE_TTL_CONFIG": "bogus=1"}, "DDBCACHE_TTL_CONFIG"),
        ({"DDBCACHE_CONSISTENCY": "maybe"}, "DDBCACHE_CONSISTENCY"),
    ):
        with pytest.raises(ConfigurationError, match=name):
            from_environment(bad)


def test_code_wins_over_environment_wins_over_default() -> None:
    env = {"DDBCACHE_TTL": "60", "DDBCACHE_NAMESPACE": "fromenv"}
    settings = Settings.resolve({"ttl": 5}, environ=env)
    assert settings.ttl == 5 and settings.namespace == "fromenv"
    assert Settings.resolve({}, environ={}).namespace == "CC"


def test_table_policy_validation() -> None:
    with pytest.raises(ConfigurationError, match=r"tables\['t'\].query_invalidation"):
        Settings.resolve({"tables": {"t": TablePolicy(query_invalidation="always")}})
    with pytest.raises(ConfigurationError, match="must be a TablePolicy"):
        Settings.resolve({"tables": {"t": 5}})


def test_describe_masks_secrets() -> None:
    shown = Settings.resolve({"signing_key": "0123456789abcdef"}).describe()
    assert shown["signing_key"] == "****"


def test_configuration_doc_lists_every_option() -> None:
    from pathlib import Path

    from ddbcache_hooks.config import options_table

    doc = (Path(__file__).parents[2] / "docs" / "configuration.md").read_text()
    assert options_table() in doc, (
        "docs/configuration.md is stale: replace its table with the output of\n"
        'python -c "from ddbcache_hooks.config import options_table; print(options_table())"'
    )


def test_account_id_is_twelve_digits() -> None:
    assert Settings.resolve({"account_id": "123456789012"}).account_id == "123456789012"
    assert Settings.resolve({}, environ={"DDBCACHE_ACCOUNT_ID": "123456789012"}).account_id
    for bad in ("12345", "12345678901x", 123456789012):
        with pytest.raises(ConfigurationError, match="account_id"):
            Settings.resolve({"account_id": bad})
    with pytest.raises(ConfigurationError, match="DDBCACHE_ACCOUNT_ID"):
        Settings.resolve({}, environ={"DDBCACHE_ACCOUNT_ID": "abc"})


def test_stale_if_error_and_early_refresh_options() -> None:
    settings = Settings.resolve(
        {"ttl": 60, "stale_if_error_s": 300, "tables": {"prices": TablePolicy(stale_if_error_s=0)}}
    )
    assert settings.early_refresh is True
    assert settings.for_table("orders").stale_if_error_ms == 300_000  # type: ignore[union-attr]
    assert settings.for_table("prices").stale_if_error_ms == 0  # type: ignore[union-attr]
    # Table tokens must outlive every entry kept for its grace.
    assert settings.max_ttl_ms == 360_000
    env = from_environment({"DDBCACHE_STALE_IF_ERROR_S": "30", "DDBCACHE_EARLY_REFRESH": "off"})
    assert env == {"stale_if_error_s": 30, "early_refresh": False}
    with pytest.raises(ConfigurationError, match="stale_if_error_s"):
        Settings.resolve({"stale_if_error_s": -1})
    with pytest.raises(ConfigurationError, match="stale_if_error_s"):
        Settings.resolve({"tables": {"t": {"stale_if_error_s": "1"}}})
    with pytest.raises(ConfigurationError, match="DDBCACHE_EARLY_REFRESH"):
        from_environment({"DDBCACHE_EARLY_REFRESH": "maybe"})


def test_settings_defaults_are_the_options_defaults() -> None:
    """config.OPTIONS and the Settings fields state each default once each: they agree."""
    public = {f.name for f in dataclasses.fields(Settings) if not f.name.startswith("_")}
    assert public == {option.name for option in OPTIONS}
    resolved = Settings.resolve({}, environ={})
    plain = Settings()
    for option in OPTIONS:
        assert getattr(resolved, option.name) == getattr(plain, option.name), option.name
        if option.default is not None:
            checked = option.check(option.name, option.default)
            assert getattr(plain, option.name) == checked, option.name


def test_write_through_option() -> None:
    assert Settings.resolve({}, environ={}).write_through is False
    settings = Settings.resolve(
        {"write_through": True, "tables": {"audit*": TablePolicy(write_through=False)}}
    )
    assert settings.for_table("orders").write_through is True  # type: ignore[union-attr]
    assert settings.for_table("audit_log").write_through is False  # type: ignore[union-attr]
    only = Settings.resolve({"tables": {"carts": {"write_through": True}}})
    assert only.for_table("carts").write_through is True  # type: ignore[union-attr]
    assert only.for_table("orders").write_through is False  # type: ignore[union-attr]
    assert from_environment({"DDBCACHE_WRITE_THROUGH": "1"}) == {"write_through": True}
    with pytest.raises(ConfigurationError, match="write_through"):
        Settings.resolve({"write_through": "yes"})
    with pytest.raises(ConfigurationError, match="write_through"):
        Settings.resolve({"tables": {"t": {"write_through": 1}}})
    with pytest.raises(ConfigurationError, match="DDBCACHE_WRITE_THROUGH"):
        from_environment({"DDBCACHE_WRITE_THROUGH": "maybe"})
