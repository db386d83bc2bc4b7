"""Settings: ``adyton.toml`` plus ``ADYTON_*`` environment variables.

Precedence, highest first: values passed to ``create_app(settings=...)``,
environment variables (``ADYTON_QUEUE__MAX_WAIT_S=30``: section and key joined
by a double underscore), the TOML file (``--config``, else ``ADYTON_CONFIG``,
else ``./adyton.toml`` if it exists), then the defaults below.

Plugins add their own sections with the ``register_settings`` hook; the full
model is built per app from the kernel's ``Settings`` plus those sections,
so one validation pass checks everything and names the bad key.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError as PydanticSettingsError,
)

from .errors import SettingsError


def default_home() -> Path:
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg) if xdg else Path.home() / ".local" / "share"
    return base / "adyton"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ServerSettings(_Section):
    host: str = Field("127.0.0.1", description="Address to bind; keep loopback unless an auth plugin is installed.")
    port: int = Field(8756, ge=0, le=65535, description="TCP port (0 = any free port).")
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024, description="Largest request body accepted (413 above).")
    keepalive_s: float = Field(5.0, gt=0,
                               description="Streaming: seconds of silence before a keep-alive comment is sent.")
    cors_origins: list[str] = Field(default_factory=list,
                                    description='Origins allowed by CORS ("*" for any); empty = CORS off.')
    shutdown_grace_s: float = Field(10.0, ge=0, description="On shutdown, seconds running requests get to finish.")
    max_json_depth: int = Field(64, ge=2, le=500,
                                description="Deepest nesting of arrays/objects a JSON request body may have (400 "
                                            "above).")
    worker_threads: int = Field(2, ge=1, le=64,
                                description="Threads for per-request CPU work kept off the event loop (tokenizing "
                                            "big prompts, parsing big bodies); more requests wait for one.")


class QueueSettings(_Section):
    max_waiting: int = Field(16, ge=0, description="Requests that may wait for a busy engine; one more gets 429.")
    max_wait_s: float = Field(60.0, gt=0,
                              description="A waiting request that cannot start within this gets 503 + Retry-After.")


class ModelsSettings(_Section):
    default: str | None = Field(None,
                                description="Model loaded at start and used when a request names none (None: the "
                                            "backend's first).")
    load_at_start: bool = Field(True,
                                description="Load the default model when the server starts (/health is 503 until it "
                                            "is loaded).")
    aliases: dict[str, str] = Field(default_factory=dict,
                                    description='Extra names for models, e.g. {qwen3_4b = "smollm2-135m-instruct"}.')


#: who may call a read-only route: anyone; any caller an authenticator accepts;
#: a metrics scraper (or an admin); an admin. Authenticators decide what
#: credentials grant "metrics" and "admin" (``Authenticator.authorize``).
Access = Literal["public", "user", "metrics", "admin"]


class AccessSettings(_Section):
    """What credentials the read-only routes need while an auth plugin is
    installed (without one every route is open); /health is always open."""

    models: Access = Field("user",
                           description='GET model lists of the wire formats (/v1/models, /v1/models/{id}, '
                                       '/api/models): "public", "user" (any valid API key), "metrics" or "admin".')
    server_info: Access = Field("admin",
                                description="GET /-/plugins and /-/models (plugin versions, model files on disk).")
    metrics: Access = Field("metrics",
                            description='GET /metrics; "metrics": the admin key or a metrics-only token '
                                        '(adyton-limits: limits.metrics_token_file).')


class DatabaseSettings(_Section):
    """The kernel's SQL database (``kernel.database``): plugins keep their
    tables in it (accounts and ledger, saved policies, steering vectors)."""

    url: str | None = Field(
        None, description="SQLAlchemy URL: sqlite:///path or postgresql+psycopg://user:password@host:port/db "
                          "(servers sharing accounts point at one PostgreSQL). None: SQLite in "
                          "$ADYTON_HOME/adyton.sqlite3.")
    sqlite_synchronous: str = Field("NORMAL", pattern="^(OFF|NORMAL|FULL|EXTRA)$",
                                    description="SQLite synchronous mode (WAL; NORMAL survives process kills).")
    pool_size: int = Field(5, ge=1, le=100, description="Connections kept open per server (more are opened "
                                                         "for a burst, then closed).")
    lock_timeout_s: float = Field(10.0, gt=0, le=3600,
                                  description="Longest a statement waits for a lock (SQLite's busy timeout, "
                                              "PostgreSQL's lock_timeout); then the request gets a 503.")


class Settings(BaseSettings):
    """The kernel's settings. Plugin sections are added per app."""

    model_config = SettingsConfigDict(
        env_prefix="ADYTON_",
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
    )

    home: Path = Field(default_factory=default_home,
                       description="Data directory: models, accounts, caches (ADYTON_HOME).")
    log_level: str = Field("info", description="Logging level: debug, info, warning, error.")
    server: ServerSettings = Field(default_factory=ServerSettings)
    queue: QueueSettings = Field(default_factory=QueueSettings)
    models: ModelsSettings = Field(default_factory=ModelsSettings)
    access: AccessSettings = Field(default_factory=AccessSettings)
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _TomlSource(settings_cls))


class _TomlSource(PydanticBaseSettingsSource):
    def __init__(self, settings_cls: type[BaseSettings]) -> None:
        super().__init__(settings_cls)
        path = getattr(settings_cls, "__toml_path__", None)
        self.data: dict[str, Any] = {}
        if path is not None:
            try:
                with open(path, "rb") as f:
                    self.data = tomllib.load(f)
            except FileNotFoundError:
                raise SettingsError(f"settings file not found: {path}") from None
            except tomllib.TOMLDecodeError as exc:
                raise SettingsError(f"settings file {path} is not valid TOML: {exc}") from None

    def get_field_value(self, field, field_name):  # pragma: no cover - unused
        return self.data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self.data)


def find_config(path: str | os.PathLike | None = None) -> Path | None:
    if path:
        return Path(path)
    env = os.environ.get("ADYTON_CONFIG")
    if env:
        return Path(env)
    local = Path("adyton.toml")
    return local if local.exists() else None


def build_settings_model(sections: dict[str, type[BaseModel]], toml_path: Path | None) -> type[Settings]:
    """The app's settings class: the kernel's plus the plugins' sections."""
    fields: dict[str, Any] = {}
    for name, model in sorted(sections.items()):
        if name in Settings.model_fields:
            raise SettingsError(f"settings section '{name}' is reserved by the kernel")
        fields[name] = (model, Field(default_factory=model))
    cls = create_model("AppSettings", __base__=Settings, **fields)
    cls.__toml_path__ = toml_path  # type: ignore[attr-defined]
    return cls


def load_settings(
    sections: dict[str, type[BaseModel]] | None = None,
    overrides: dict[str, Any] | None = None,
    config: str | os.PathLike | None = None,
) -> Settings:
    """Validate everything; raise SettingsError naming each bad key."""
    toml_path = find_config(config)
    cls = build_settings_model(sections or {}, toml_path)
    try:
        return cls(**(overrides or {}))
    except PydanticSettingsError as exc:
        # an environment variable that should hold JSON (a list, a table) does not
        match = re.search(r'field "(\w+)"', str(exc))
        section = match.group(1) if match else ""
        prefix = f"ADYTON_{section.upper()}"
        culprits = [
            f"  {name[len('ADYTON_'):].lower().replace('__', '.')}: cannot parse {name}={value!r} "
            "(lists and tables must be JSON, e.g. '[\"a\", \"b\"]')"
            for name, value in sorted(os.environ.items())
            if section and (name == prefix or name.startswith(prefix + "__"))
        ]
        raise SettingsError("invalid settings:\n" + ("\n".join(culprits) or f"  {exc}")) from None
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"]) or "(settings)"
            env = "ADYTON_" + "__".join(str(p) for p in err["loc"]).upper()
            problems.append(f"  {key}: {err['msg']} (set in adyton.toml or {env})")
        where = f" (file: {toml_path})" if toml_path else ""
        raise SettingsError("invalid settings" + where + ":\n" + "\n".join(problems)) from None


def describe_settings(settings_cls: type[BaseModel], prefix: str = "") -> list[dict[str, Any]]:
    """Rows (key, env var, default, description) for every setting."""
    rows = []
    for name, field in settings_cls.model_fields.items():
        key = f"{prefix}{name}"
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            if field.description:
                rows.append({"key": key, "env": "", "default": None, "description": field.description,
                             "section": True})
            rows.extend(describe_settings(annotation, prefix=key + "."))
            continue
        if field.default_factory is default_home:
            default: Any = "$XDG_DATA_HOME/adyton, else ~/.local/share/adyton"
        else:
            default = field.get_default(call_default_factory=True)
        rows.append({
            "key": key,
            "env": "ADYTON_" + key.replace(".", "__").upper(),
            "default": default,
            "description": field.description or "",
        })
    return rows


def settings_markdown(settings_cls: type[BaseModel]) -> str:
    """docs/configuration.md: every setting, its environment variable and default."""
    import json

    from pydantic_core import to_jsonable_python

    def show(value: Any) -> str:
        if isinstance(value, str) and value.startswith("$XDG"):
            return value
        text = json.dumps(to_jsonable_python(value))
        return text.replace("|", "\\|")

    lines = [
        "# Configuration",
        "",
        "<!-- generated by `adyton settings --markdown` with the first-party plugins; "
        "tests/test_docs.py checks it is current -->",
        "",
        "Settings come from, highest precedence first: values passed to `create_app(settings=...)`, "
        "`ADYTON_*` environment variables (a section and its key joined by `__`, e.g. "
        "`ADYTON_QUEUE__MAX_WAIT_S=30`; lists and tables as JSON), the TOML file (`--config`, else "
        "`ADYTON_CONFIG`, else `./adyton.toml`), then the defaults below. An invalid value stops "
        "startup with the key named. `ADYTON_LOAD_PLUGINS` (comma list; empty = none) chooses which "
        "installed plugins load.",
        "",
        "Each plugin adds its own section; `adyton settings --markdown` prints this page for the "
        "plugins installed here.",
        "",
    ]
    section = None
    for row in describe_settings(settings_cls):
        top = row["key"].split(".")[0] if "." in row["key"] else ""
        if top != section:
            section = top
            lines += ["", f"## [{top}]" if top else "## top level", "",
                      "| key | environment variable | default | meaning |", "|---|---|---|---|"]
        if row.get("section"):
            continue
        lines.append(f"| `{row['key']}` | `{row['env']}` | `{show(row['default'])}` | {row['description']} |")
    return "\n".join(lines) + "\n"
