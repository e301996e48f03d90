"""The pydantic-settings sources of the configuration (see agent.config.env for the semantics): the asset file
and the ``L4E_AGENT_*`` variables, merged by a ``BaseSettings`` class in priority order (``settings_customise_sources``:
the environment over the file). Imported by :func:`agent.config.env.overlay` only when a variable is set."""

from __future__ import annotations

from collections.abc import Mapping
from contextvars import ContextVar
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, EnvSettingsSource, PydanticBaseSettingsSource, SettingsConfigDict

from agent.config.env import ENV_PREFIX, Override, _nest, _resolve_all


class AgentEnvSource(EnvSettingsSource):
    """The ``L4E_AGENT_*`` variables of ``environ`` as a nested table of typed values (module docstring).

    pydantic-settings reads the variables (``parse_env_vars``) and holds the prefix and the nesting delimiter
    from the settings class; each variable is resolved against ``root`` (the asset models) and the file's
    ``data`` (for the spelling of table keys), which the stock ``explode_env_vars`` cannot do."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str], root: type[BaseModel],
                 data: dict) -> None:
        self._environ = environ  # read by _load_env_vars, which the base class calls
        super().__init__(settings_cls)
        self.overrides = _resolve_all(self.env_vars, self.config["env_prefix"], self.env_nested_delimiter, root, data)

    def _load_env_vars(self) -> Mapping[str, str]:
        # names kept as spelled (not lowercased) so that a message repeats the variable as set; the prefix and
        # the key names are matched case-insensitively in _resolve_all
        return dict(self._environ)

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # the whole table comes from __call__

    def __call__(self) -> dict[str, Any]:
        return _nest(self.overrides)


class AssetFileSource(PydanticBaseSettingsSource):
    """The asset file's content, already read and checked as TOML by ``agent.config.load``."""

    def __init__(self, settings_cls: type[BaseSettings], data: dict) -> None:
        super().__init__(settings_cls)
        self._data = data

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self._data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return self._data


# the sources of the load under way: settings_customise_sources is a classmethod without arguments of its own
_LOADING: ContextVar[tuple[AgentEnvSource, AssetFileSource]] = ContextVar("_LOADING")


class AssetSources(BaseSettings):
    """The merged configuration sources, before validation: every key lands in ``model_extra`` as given (the
    asset models validate it strictly afterwards, with the agent's messages)."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_nested_delimiter="__", case_sensitive=False,
                                      extra="allow", env_file=None, secrets_dir=None)

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings,
                                   file_secret_settings):
        """The environment over the file, nothing else: no keyword arguments, no .env file, no secrets
        directory (secrets are read where they are used: module docstring)."""
        env_source, file_source = _LOADING.get()
        return env_source, file_source


def merge(environ: Mapping[str, str], root: type[BaseModel], data: dict) -> tuple[dict, list[Override]]:
    """:func:`agent.config.env.overlay` once a variable is set: the merged data and the overrides."""
    env_source = AgentEnvSource(AssetSources, environ, root, data)
    token = _LOADING.set((env_source, AssetFileSource(AssetSources, data)))
    try:
        merged = AssetSources()
    finally:
        _LOADING.reset(token)
    return dict(merged.model_extra or {}), [o for o, _ in env_source.overrides]
