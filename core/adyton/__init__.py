"""adyton: a self-hosted LLM inference server built as a microkernel.

This module is the whole public API plugins may import. Hooks and the
objects they register are documented in ``adyton.hookspecs``; shared data
types in ``adyton.types``; errors in ``adyton.errors``.
"""

from . import errors, tools, types
from .access import require_access
from .app import create_app
from .body import check_text, read_json_body
from .chat_template import ChatTemplate, ChatTemplateError
from .database import Database
from .errors import (
    AdytonError,
    BackendError,
    BadGateway,
    ContextTooLong,
    Forbidden,
    GatewayTimeout,
    InvalidRequest,
    ModelNotFound,
    NotFound,
    PayloadTooLarge,
    PluginError,
    RateLimited,
    ServerBusy,
    ServiceUnavailable,
    SettingsError,
    Unauthorized,
    UnsupportedConstraint,
    invalid_from_validation,
    json_type_name,
)
from .generation import Generation
from .hookspecs import (
    Authenticator,
    Backend,
    Limiter,
    LogitsProcessor,
    Sampler,
    StepFunction,
    WireFormat,
    hookimpl,
)
from .http_errors import DEFAULT_ERROR_SCHEMA, default_error_response
from .kernel import Kernel, current_kernel
from .openapi import json_operation
from .sampling import DefaultSampler, StopMatcher
from .settings import Settings, load_settings
from .types import *  # noqa: F403 - types.__all__ is the public data model

__all__ = [
    "DEFAULT_ERROR_SCHEMA",
    "AdytonError",
    "Authenticator",
    "Backend",
    "BackendError",
    "BadGateway",
    "ChatTemplate",
    "ChatTemplateError",
    "ContextTooLong",
    "Database",
    "DefaultSampler",
    "Forbidden",
    "GatewayTimeout",
    "Generation",
    "InvalidRequest",
    "Kernel",
    "Limiter",
    "LogitsProcessor",
    "ModelNotFound",
    "NotFound",
    "PayloadTooLarge",
    "PluginError",
    "RateLimited",
    "Sampler",
    "ServerBusy",
    "ServiceUnavailable",
    "Settings",
    "SettingsError",
    "StepFunction",
    "StopMatcher",
    "Unauthorized",
    "UnsupportedConstraint",
    "WireFormat",
    "check_text",
    "create_app",
    "current_kernel",
    "require_access",
    "default_error_response",
    "errors",
    "hookimpl",
    "json_operation",
    "invalid_from_validation",
    "json_type_name",
    "load_settings",
    "tools",
    "read_json_body",
    "types",
    *types.__all__,
]
