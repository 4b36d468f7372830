"""Project exceptions. The CLI turns a MedagentError into one line on stderr and exit code 2."""

from __future__ import annotations


class MedagentError(Exception):
    """An error the user can act on; its message names the field or file and what is wrong."""

    exit_code = 2


class CaseError(MedagentError):
    """The case file or one of its attachments is invalid."""


class ConfigError(MedagentError):
    """medagent.toml is invalid or names something that does not exist."""


class ToolError(MedagentError):
    """A tool could not examine its input; becomes error evidence inside a run."""


class UnavailableError(MedagentError):
    """A model or package the tool needs is not installed or configured."""


class ModelFileMissing(ConfigError, UnavailableError):
    """A model file the configuration names is not there: a configuration error, and also a model that is
    unavailable, so a run that may go on without it (the LLM with `planner = "auto"`) does, saying why."""
