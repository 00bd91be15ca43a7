"""Options: defaults, validation, environment parsing, precedence."""

from __future__ import annotations

import dataclasses
from typing import Literal

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


# --- environment variables say what is wrong with them --------------------------------


def test_unknown_variable_warns_once_with_the_closest_name(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ddbcache_hooks import config

    monkeypatch.setattr(config, "_warned_unknown", set())
    env = {"DDBCACHE_TTLL": "5", "DDBCACHE_ENABLE": "1", "DDBCACHE_ZZZ": "1", "DDBCACHE_TTL": "9"}
    with caplog.at_level("WARNING", logger="ddbcache_hooks"):
        assert from_environment(env) == {"ttl": 9}  # the unknown names are ignored
        from_environment(env)
    assert [r.getMessage() for r in caplog.records] == [
        "ddbcache-hooks: unknown variable DDBCACHE_ENABLE is ignored; did you mean "
        "DDBCACHE_ENABLED?",
        "ddbcache-hooks: unknown variable DDBCACHE_TTLL is ignored; did you mean DDBCACHE_TTL?",
        "ddbcache-hooks: unknown variable DDBCACHE_ZZZ is ignored; see docs/configuration.md",
    ]


def test_variables_the_library_reads_are_not_unknown() -> None:
    from ddbcache_hooks.config import known_variables, unknown_variables

    environ = dict.fromkeys(known_variables(), "1")
    assert unknown_variables(environ) == {}
    assert "DDBCACHE_REDIS_URL" in environ and "DDBCACHE_SIGNING_KEY" in environ


@pytest.mark.parametrize(
    ("text", "value"),
    [(t, True) for t in ("1", "true", "TRUE", "Yes", "on", " On ")]
    + [(t, False) for t in ("0", "false", "False", "NO", "off")],
)
def test_every_boolean_variable_takes_the_documented_spellings(text: str, value: bool) -> None:
    from ddbcache_hooks.config import env_flag

    assert env_flag("ENABLED", {"DDBCACHE_ENABLED": text}) is value
    booleans = [o for o in OPTIONS if o.check.__name__ == "_boolean"]
    assert len(booleans) >= 3
    for option in booleans:
        assert from_environment({option.env: text}) == {option.name: value}


def test_a_bad_boolean_names_the_variable_and_the_accepted_spellings() -> None:
    from ddbcache_hooks.config import env_flag

    accepted = "must be a boolean (1/0, true/false, yes/no, on/off), got 'maybe'"
    with pytest.raises(ConfigurationError) as raised:
        env_flag("ENABLED", {"DDBCACHE_ENABLED": "maybe"})
    assert str(raised.value) == f"DDBCACHE_ENABLED {accepted}"
    with pytest.raises(ConfigurationError) as raised:
        from_environment({"DDBCACHE_PUBLISH_INVALIDATIONS": "maybe"})
    assert str(raised.value) == f"DDBCACHE_PUBLISH_INVALIDATIONS {accepted}"


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        (
            "DDBCACHE_TTL",
            "abc",
            "DDBCACHE_TTL must be a positive whole number of seconds, got 'abc'",
        ),
        ("DDBCACHE_TTL", "0", "DDBCACHE_TTL must be a positive whole number of seconds, got '0'"),
        (
            "DDBCACHE_LEASE_MS",
            "2s",
            "DDBCACHE_LEASE_MS must be a positive whole number of milliseconds, got '2s'",
        ),
        (
            "DDBCACHE_METRICS_FLUSH_S",
            "-5",
            "DDBCACHE_METRICS_FLUSH_S must be a whole number of seconds, 0 or more, got '-5'",
        ),
        (
            "DDBCACHE_MAX_ENTRY_BYTES",
            "1MB",
            "DDBCACHE_MAX_ENTRY_BYTES must be a positive whole number of bytes, got '1MB'",
        ),
        (
            "DDBCACHE_CONSISTENCY",
            "maybe",
            "DDBCACHE_CONSISTENCY must be one of eventual, strict, got 'maybe'",
        ),
        (
            "DDBCACHE_TTL_CONFIG",
            "item=x",
            "DDBCACHE_TTL_CONFIG must be kind=seconds pairs such as item=60,query=30 (kinds: "
            "item, item_negative, query, scan), got 'item=x' ('x' is not a whole number of "
            "seconds)",
        ),
    ],
)
def test_a_bad_value_names_the_variable_and_the_expected_form(
    variable: str, value: str, message: str
) -> None:
    with pytest.raises(ConfigurationError) as raised:
        from_environment({variable: value})
    assert str(raised.value) == message
    assert "invalid literal" not in str(raised.value)


def test_a_bad_signing_key_is_not_echoed() -> None:
    secret = "hunter2-secret"  # 14 bytes: too short
    with pytest.raises(ConfigurationError) as raised:
        from_environment({"DDBCACHE_SIGNING_KEY": secret})
    assert str(raised.value) == (
        "DDBCACHE_SIGNING_KEY must be a key of at least 16 bytes, got a value of 14 bytes "
        "(not shown)"
    )
    with pytest.raises(ConfigurationError) as raised:
        Settings.resolve({"signing_key": secret})
    assert secret not in str(raised.value)


# --- Options (the typed keyword options), OPTIONS and Settings agree ----------------


def _conforms(value: object, hint: object) -> bool:
    """Whether ``value`` is of the type ``hint`` (the forms Options uses)."""
    import collections.abc
    import types
    import typing

    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is typing.Any:
        return True
    if hint is type(None):
        return value is None
    if origin in (typing.Union, types.UnionType):
        return any(_conforms(value, arg) for arg in args)
    if origin is typing.Literal:
        return value in args
    if origin is collections.abc.Mapping:
        return isinstance(value, collections.abc.Mapping) and all(
            _conforms(k, args[0]) and _conforms(v, args[1]) for k, v in value.items()
        )
    if origin is collections.abc.Sequence:
        return isinstance(value, collections.abc.Sequence) and all(
            _conforms(item, args[0]) for item in value
        )
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    assert isinstance(hint, type), f"a form _conforms does not know: {hint!r}"
    return isinstance(value, hint)


def test_options_typeddict_options_and_settings_agree() -> None:
    """One set of names, and types and defaults that agree, in all three directions."""
    import typing

    from ddbcache_hooks.config import Options

    hints = typing.get_type_hints(Options)
    fields = [f.name for f in dataclasses.fields(Settings) if not f.name.startswith("_")]
    assert list(hints) == [o.name for o in OPTIONS] == fields  # same names, same order
    assert Options.__total__ is False  # every option is optional
    defaults = Settings()
    for option in OPTIONS:
        hint = hints[option.name]
        # OPTIONS' default is a value of the typed option, and the Settings field's
        # default is that default validated (which is a value of the typed option too).
        assert _conforms(option.default, hint), (option.name, option.default, hint)
        validated = option.check(option.name, option.default)
        assert getattr(defaults, option.name) == validated, option.name
        assert _conforms(validated, hint), (option.name, validated, hint)
        # Nothing outside the type passes the option's check.
        with pytest.raises(ConfigurationError, match=option.name):
            option.check(option.name, object())
        # A choice option accepts exactly its Literal's values.
        if typing.get_origin(hint) is Literal:
            for choice in typing.get_args(hint):
                assert option.check(option.name, choice) == choice
            with pytest.raises(ConfigurationError, match="must be one of"):
                option.check(option.name, "none-of-these")
    assert {name for name, hint in hints.items() if typing.get_origin(hint) is Literal} == {
        "consistency",
        "query_invalidation",
        "response_metadata",
        "isolation",
    }


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


def test_cluster_buckets_option() -> None:
    assert Settings.resolve({}, environ={}).cluster_buckets == 0
    assert Settings.resolve({}, environ={"DDBCACHE_CLUSTER_BUCKETS": "16"}).cluster_buckets == 16
    assert Settings.resolve({"cluster_buckets": 1024}).cluster_buckets == 1024
    for bad in (-1, 1025, True, "8", 2.0):
        with pytest.raises(ConfigurationError, match=r"cluster_buckets must be 0 or 1-1024"):
            Settings.resolve({"cluster_buckets": bad})
    with pytest.raises(ConfigurationError) as raised:
        from_environment({"DDBCACHE_CLUSTER_BUCKETS": "many"})
    assert str(raised.value) == (
        "DDBCACHE_CLUSTER_BUCKETS must be 0, or 1-1024 (about 4 per shard), got 'many'"
    )
